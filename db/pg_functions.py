"""PostgreSQL functions for the annotators' hot path: next_task, submit and skip, each one statement (one round
trip).

Why: through the ORM one next_task + submit cost ~15 statements (BEGIN, locks, reads, writes, the summaries,
COMMIT) and ~15 ms of Python CPU; 32 annotators got about 2% of what `pgbench -N` gets from the same server. Here
the whole transaction runs inside the server and the client sends one statement in autocommit mode (README gives
the figures before and after).

The functions do exactly what db.services.assignment.next_task / skip_task and db.services.labels._submit_once
do (their docstrings give the rules; SQLite keeps running those), and what db.services.summary.labels_written /
count_change add to the Dashboard and Agreement sums. tests/test_pg_functions.py runs one scripted day of
annotation through these functions and through the Python path: every outcome and every row must be the same.

Errors are raised with SQLSTATEs of class 'IL', which the services turn back into their ServiceError types
(IL404 NotFound, IL400 ServiceError, IL410 TaskReassigned, IL422 InputError with COLUMN as the field, IL503
"busy, try again"; IL000: a case left to the Python path; IL409 stays inside il_next_task). An error rolls the
whole call back (nothing half-written).

Each change to the SQL goes with a migration that runs `install` again (CREATE OR REPLACE); `create_schema`
(tests, benchmarks) installs it too.
"""
from __future__ import annotations

import weakref
from typing import Any

from db.models import CHOICES
from db.services.projects import DEFAULT_SETTINGS

_LIVE = "(s.state = 'submitted' OR (s.state = 'assigned' AND s.expires_at > {at}))"


def _candidate(by_kind: bool, lock: str) -> str:
    """next_task's candidate query: the best open task with a free slot that this user has not done
    (db.services.assignment._candidate). lock: 'skip', 'wait' or '' (no lock)."""
    kind = " AND t.kind = p_kind" if by_kind else ""
    tail = {"skip": " FOR UPDATE OF t SKIP LOCKED", "wait": " FOR UPDATE OF t", "": ""}[lock]
    return f"""
          SELECT t.id, t.kind, t.prompt_id, t.response_ids INTO v_tid, v_kind, v_pid, v_rids
            FROM tasks t
           WHERE t.project_id = p_project AND t.status = 'open'{kind}
             AND t.id <> ALL (v_full)
             AND NOT EXISTS (SELECT 1 FROM assignments d WHERE d.task_id = t.id AND d.user_id = p_user
                                                          AND d.state IN ('submitted', 'skipped'))
             AND (SELECT count(*) FROM assignments s WHERE s.task_id = t.id AND {_LIVE.format(at="v_now")})
                 < v_overlap
           ORDER BY t.n_submitted DESC, t.id LIMIT 1{tail};"""


def _by_kind(lock: str) -> str:
    # Two static statements, not `p_kind IS NULL OR ...`: each gets a plan that uses its own queue index.
    return f"""
        IF p_kind IS NULL THEN{_candidate(False, lock)}
        ELSE{_candidate(True, lock)}
        END IF;"""


NEXT_TASK = f"""
CREATE OR REPLACE FUNCTION il_next_task(p_user integer, p_project integer, p_kind text, p_lease interval,
                                        p_now timestamptz, p_wait_s double precision)
RETURNS TABLE (project_name text, assignment_id integer, assigned_at timestamptz, expires_at timestamptz,
               task_id integer, kind text, prompt_id integer, response_ids json, prompt_text text,
               messages json, responses json)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
  v_name text; v_overlap integer; v_now timestamptz;
  v_tid integer; v_kind text; v_pid integer; v_rids json;
  v_aid integer; v_at timestamptz; v_exp timestamptz;
  v_full integer[] := '{{}}'; v_ids integer[];
  v_wait boolean;
  v_deadline timestamptz := clock_timestamp() + make_interval(secs => p_wait_s);
BEGIN
  SELECT p.name, p.labels_per_task INTO v_name, v_overlap FROM projects p WHERE p.id = p_project;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no project with id %', p_project USING ERRCODE = 'IL404';
  END IF;
  v_now := coalesce(p_now, clock_timestamp());
  -- a live lease the user already holds is handed out again (a page reload shows the same task)
  SELECT a.id, a.assigned_at, a.expires_at, t.id, t.kind, t.prompt_id, t.response_ids
    INTO v_aid, v_at, v_exp, v_tid, v_kind, v_pid, v_rids
    FROM assignments a JOIN tasks t ON t.id = a.task_id
   WHERE a.user_id = p_user AND t.project_id = p_project AND a.state = 'assigned' AND a.expires_at > v_now
     AND (p_kind IS NULL OR t.kind = p_kind)
   ORDER BY a.assigned_at, a.id LIMIT 1;
  v_wait := false;
  WHILE v_aid IS NULL LOOP
    IF clock_timestamp() > v_deadline THEN  -- here: the CONTINUEs below come back to this point too
      RAISE EXCEPTION 'the task queue is very busy: no task could be taken for % s; try again in a moment',
                      round(p_wait_s) USING ERRCODE = 'IL503';
    END IF;
    v_tid := NULL;
    BEGIN  -- a subtransaction: raising IL409 inside rolls back to here, which drops the row lock of a full task
      v_now := coalesce(p_now, clock_timestamp());
      IF v_wait THEN{_by_kind("wait")}
      ELSE{_by_kind("skip")}
      END IF;
      IF v_tid IS NOT NULL THEN
        v_now := coalesce(p_now, clock_timestamp());  -- read under the row lock: no later lease is older
        -- the slot count runs in this statement, on a snapshot taken after the lock was granted
        INSERT INTO assignments AS a (task_id, user_id, state, assigned_at, expires_at)
        SELECT v_tid, p_user, 'assigned', v_now, v_now + p_lease
         WHERE (SELECT count(*) FROM assignments s WHERE s.task_id = v_tid AND {_LIVE.format(at="v_now")})
               < v_overlap
        ON CONFLICT (task_id, user_id) DO UPDATE
           SET state = excluded.state, assigned_at = excluded.assigned_at, expires_at = excluded.expires_at,
               finished_at = NULL, skip_reason = NULL
         -- the user's own submit or skip (another tab) committed since the candidate's snapshot: theirs stands,
         -- and the task is left out like a full one
         WHERE a.state NOT IN ('submitted', 'skipped')
        RETURNING a.id INTO v_aid;
        IF v_aid IS NULL THEN
          RAISE EXCEPTION 'task % is full' , v_tid USING ERRCODE = 'IL409';
        END IF;
        v_at := v_now; v_exp := v_now + p_lease;
      END IF;
    EXCEPTION
      WHEN SQLSTATE 'IL409' THEN  -- full once locked: left out of this call's later looks
        v_full := v_full || v_tid; v_tid := NULL; v_wait := false; CONTINUE;
      WHEN deadlock_detected THEN  -- the blocking wait closed a cycle: look again after a short pause
        PERFORM pg_sleep(0.005 + random() * 0.045); v_tid := NULL; v_wait := false; CONTINUE;
    END;
    IF v_aid IS NULL THEN
      IF v_wait THEN
        v_wait := false;  -- after one blocking look, start over with SKIP LOCKED on a fresh snapshot
      ELSE
        {_by_kind("").strip()}
        IF v_tid IS NULL THEN
          RETURN;  -- nothing for this user in the committed data, locked or not
        END IF;
        v_wait := true;  -- every candidate is held by someone right now: wait for the first one
      END IF;
    END IF;
  END LOOP;
  v_ids := ARRAY(SELECT e::integer FROM json_array_elements_text(v_rids) AS e);
  RETURN QUERY
    SELECT v_name::text, v_aid, v_at, v_exp, v_tid, v_kind::text, v_pid, v_rids, pr.text, pr.messages,
           -- = ANY(array): an index lookup per id (a join against json_array_elements was planned as a
           -- scan of every response, the plan not knowing the array holds 2-9 ids)
           (SELECT coalesce(json_agg(json_build_object('id', r.id, 'text', r.text)
                                     ORDER BY array_position(v_ids, r.id)), '[]'::json)
              FROM responses r WHERE r.id = ANY (v_ids))
      FROM prompts pr WHERE pr.id = v_pid;
END
$fn$;
"""

# The agreement sums one item adds (db.services.summary.add_item_counts): the category profile, each annotator
# pair's two values, and per annotator whether the others' majority (unique most common value) exists and agrees.
ITEM_COUNTS = """
CREATE OR REPLACE FUNCTION il_item_counts(p_users integer[], p_cats text[], p_categories text[])
RETURNS TABLE (what text, user_a integer, user_b integer, x text, y text)
LANGUAGE plpgsql IMMUTABLE AS $fn$
#variable_conflict use_column
DECLARE
  -- loops over a few values, no SQL inside: a query per item cost ~1 ms of a submit's ~2
  n integer := coalesce(array_length(p_users, 1), 0); m integer := array_length(p_categories, 1);
  i integer; j integer; q integer; c integer; v_best text; v_top integer; v_tie boolean;
BEGIN
  IF n < 2 THEN
    RETURN;
  END IF;
  what := 'profile'; user_a := 0; user_b := 0; y := ''; x := '';
  FOR q IN 1..m LOOP
    c := 0;
    FOR i IN 1..n LOOP
      IF p_cats[i] = p_categories[q] THEN c := c + 1; END IF;
    END LOOP;
    x := x || CASE WHEN q > 1 THEN ',' ELSE '' END || c;
  END LOOP;
  RETURN NEXT;
  FOR i IN 1..n LOOP
    FOR j IN 1..n LOOP
      IF p_users[i] < p_users[j] THEN
        what := 'pair'; user_a := p_users[i]; user_b := p_users[j]; x := p_cats[i]; y := p_cats[j];
        RETURN NEXT;
      END IF;
    END LOOP;
  END LOOP;
  FOR i IN 1..n LOOP  -- the others' unique most common value (agreement._majority), if any
    v_best := NULL; v_top := 0; v_tie := false;
    FOR q IN 1..m LOOP
      c := 0;
      FOR j IN 1..n LOOP
        IF j <> i AND p_cats[j] = p_categories[q] THEN c := c + 1; END IF;
      END LOOP;
      IF c > v_top THEN
        v_best := p_categories[q]; v_top := c; v_tie := false;
      ELSIF c = v_top AND c > 0 THEN
        v_tie := true;
      END IF;
    END LOOP;
    IF v_top > 0 AND NOT v_tie THEN
      what := 'compared'; user_a := p_users[i]; user_b := 0; x := ''; y := '';
      RETURN NEXT;
      IF p_cats[i] = v_best THEN
        what := 'agreed';
        RETURN NEXT;
      END IF;
    END IF;
  END LOOP;
END
$fn$;
"""

_CATS = "ARRAY[" + ", ".join(f"'{c}'" for c in CHOICES) + "]"
_LABEL_TABLE = {"compare": "preference_labels", "rank": "rankings", "rate": "ratings",
                "demonstrate": "demonstrations"}


def _existing() -> str:
    branches = "\n  ELS".join(
        f"IF p_kind = '{k}' THEN\n    SELECT l.id, l.created_at INTO v_lid, v_created FROM {t} l "
        "WHERE l.task_id = p_task AND l.user_id = p_user;" for k, t in _LABEL_TABLE.items())
    return f"  {branches}\n  END IF;"


SUBMIT = f"""
CREATE OR REPLACE FUNCTION il_submit(p_kind text, p_task integer, p_user integer, p_now timestamptz,
                                     p_choice text, p_strength text, p_flags json, p_comment text,
                                     p_seconds double precision, p_ordering json, p_good boolean,
                                     p_likert integer, p_text text, p_hash text)
RETURNS TABLE (label_id integer, created boolean, created_at timestamptz, response_id integer, prompt_id integer,
               n_submitted integer, status text, assignment_id integer)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
  t record; v_now timestamptz; v_lid integer; v_created timestamptz;
  v_aid integer; v_astate text; v_aexp timestamptz; v_others integer;
  v_n integer; v_status text; v_min integer; v_rid integer; v_dup record;
  v_system boolean; v_users integer[]; v_cats text[]; v_prior_users integer[]; v_prior_cats text[];
  v_ords text[]; v_rids integer[]; v_items il_item[]; v_iu integer[]; v_ic text[]; v_pu integer[]; v_pc text[];
  v_rx integer; v_ry integer; v_c text; i integer; j integer; k integer; v_setting jsonb; v_sums_project integer;
BEGIN
  -- the task row, locked: two annotators submitting at once must not both write n_submitted = old + 1
  SELECT tk.id, tk.kind, tk.project_id, tk.prompt_id, tk.response_ids, tk.status, tk.n_submitted,
         p.labels_per_task, p.settings
    INTO t FROM tasks tk JOIN projects p ON p.id = tk.project_id WHERE tk.id = p_task FOR UPDATE OF tk;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no task %', p_task USING ERRCODE = 'IL404';
  END IF;
  IF t.kind <> p_kind THEN
    RAISE EXCEPTION 'task % is a % task, not %', p_task, t.kind, p_kind USING ERRCODE = 'IL400';
  END IF;
  v_now := coalesce(p_now, clock_timestamp());  -- read under the row lock (see labels._submit_once)
  -- a repeat submit returns the first label before the new input is even checked
{_existing()}
  IF v_lid IS NOT NULL THEN
    RETURN QUERY SELECT v_lid, false, v_created, NULL::integer, NULL::integer, NULL::integer, NULL::text,
                        NULL::integer;
    RETURN;
  END IF;
  -- what needs the task: a ranking places each of its responses once; a demonstration's length and novelty
  IF p_kind = 'rank' THEN
    IF (SELECT array_agg(e.v::integer ORDER BY e.v::integer) FROM json_array_elements(p_ordering) g,
               json_array_elements_text(g.value) e(v))
       IS DISTINCT FROM (SELECT array_agg(r.v::integer ORDER BY r.v::integer)
                           FROM json_array_elements_text(t.response_ids) r(v)) THEN
      RAISE EXCEPTION 'ordering must place every response of the task exactly once'
            USING ERRCODE = 'IL422', COLUMN = 'ordering';
    END IF;
  ELSIF p_kind = 'demonstrate' THEN
    -- int(setting or 1), as labels._check_demonstration reads it; a setting of another type: the Python path
    v_setting := t.settings::jsonb -> 'min_demonstration_chars';
    IF v_setting IS NULL THEN
      v_min := {int(DEFAULT_SETTINGS["min_demonstration_chars"])};
    ELSIF jsonb_typeof(v_setting) = 'null' OR (jsonb_typeof(v_setting) = 'number' AND v_setting::numeric = 0) THEN
      v_min := 1;
    ELSIF jsonb_typeof(v_setting) = 'number' THEN
      v_min := least(trunc(v_setting::numeric), 2147483647)::integer;
    ELSE
      RAISE EXCEPTION 'min_demonstration_chars is not a number' USING ERRCODE = 'IL000';
    END IF;
    IF char_length(p_text) < v_min THEN
      RAISE EXCEPTION 'the demonstration has % characters; write at least %', char_length(p_text), v_min
            USING ERRCODE = 'IL422', COLUMN = 'text';
    END IF;
    SELECT d.id, d.task_id INTO v_dup FROM demonstrations d
     WHERE d.prompt_id = t.prompt_id AND d.user_id = p_user AND d.content_hash = p_hash LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'you already wrote exactly this demonstration for this prompt (demonstration %, %); '
                      'write a different one or skip the task', v_dup.id,
                      CASE WHEN v_dup.task_id IS NULL THEN 'an import' ELSE 'task ' || v_dup.task_id END
            USING ERRCODE = 'IL422', COLUMN = 'text';
    END IF;
  END IF;
  -- the slot (labels._claim_slot): kept while labels plus other annotators' live leases leave room
  SELECT a.id, a.state, a.expires_at INTO v_aid, v_astate, v_aexp
    FROM assignments a WHERE a.task_id = p_task AND a.user_id = p_user;
  IF v_astate = 'skipped' THEN
    RAISE EXCEPTION 'task % was skipped by this user', p_task USING ERRCODE = 'IL400';
  END IF;
  SELECT count(*) INTO v_others FROM assignments s
   WHERE s.task_id = p_task AND s.user_id <> p_user AND {_LIVE.format(at="v_now")};
  IF v_others >= t.labels_per_task THEN
    IF v_aid IS NOT NULL AND (v_astate <> 'assigned' OR v_aexp <= v_now) THEN
      RAISE EXCEPTION 'task % was reassigned: your lease ran out at % UTC and the task went to another '
                      'annotator, so this answer was NOT saved. Copy anything you want to keep, then skip to '
                      'get the next task.', p_task, to_char(v_aexp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
            USING ERRCODE = 'IL410';
    END IF;
    RAISE EXCEPTION 'task % already has all its labels (%); nothing was saved', p_task, t.labels_per_task
          USING ERRCODE = 'IL400';
  END IF;
  IF v_aid IS NULL THEN  -- no lease (a direct service or script submit) into a free slot
    INSERT INTO assignments (task_id, user_id, state, assigned_at, expires_at, finished_at)
    VALUES (p_task, p_user, 'submitted', v_now, v_now, v_now);
  ELSE
    UPDATE assignments SET state = 'submitted', finished_at = v_now WHERE id = v_aid;
  END IF;
  v_n := t.n_submitted + 1;
  v_status := CASE WHEN v_n >= t.labels_per_task THEN 'done' ELSE t.status END;
  UPDATE tasks SET n_submitted = v_n, status = v_status WHERE id = p_task;
  -- the label
  IF p_kind = 'compare' THEN
    INSERT INTO preference_labels (task_id, user_id, choice, strength, flags, comment, seconds, created_at)
    VALUES (p_task, p_user, p_choice, CASE WHEN p_choice IN ('a', 'b') THEN p_strength END, p_flags, p_comment,
            p_seconds, v_now) RETURNING id INTO v_lid;
  ELSIF p_kind = 'rank' THEN
    INSERT INTO rankings (task_id, user_id, ordering, flags, comment, seconds, created_at)
    VALUES (p_task, p_user, p_ordering, p_flags, p_comment, p_seconds, v_now) RETURNING id INTO v_lid;
  ELSIF p_kind = 'rate' THEN
    v_rid := (t.response_ids ->> 0)::integer;
    INSERT INTO ratings (task_id, user_id, response_id, good, likert, flags, comment, seconds, created_at)
    VALUES (p_task, p_user, v_rid, p_good, p_likert, p_flags, p_comment, p_seconds, v_now) RETURNING id INTO v_lid;
  ELSE
    INSERT INTO demonstrations (prompt_id, task_id, user_id, text, content_hash, seconds, status, review_note,
                                created_at)
    VALUES (t.prompt_id, p_task, p_user, p_text, p_hash, p_seconds, 'submitted', '', v_now) RETURNING id INTO v_lid;
  END IF;
  -- the Dashboard sums (summary.labels_written): the day, the time taken; a demonstration's project is its prompt's
  v_sums_project := t.project_id;
  IF p_kind = 'demonstrate' THEN
    SELECT pr.project_id INTO v_sums_project FROM prompts pr WHERE pr.id = t.prompt_id;
  END IF;
  INSERT INTO label_days AS d (project_id, user_id, kind, day, n, first_at, last_at)
  VALUES (v_sums_project, p_user, p_kind, to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 1, v_now, v_now)
  ON CONFLICT (project_id, user_id, kind, day) DO UPDATE
     SET n = d.n + 1, first_at = least(d.first_at, excluded.first_at), last_at = greatest(d.last_at, excluded.last_at);
  IF p_seconds IS NOT NULL THEN
    INSERT INTO label_seconds AS s (project_id, user_id, kind, seconds, n)
    VALUES (v_sums_project, p_user, p_kind, p_seconds, 1)
    ON CONFLICT (project_id, user_id, kind, seconds) DO UPDATE SET n = s.n + 1;
  END IF;
  -- the Agreement sums: what the task's items count with this label, less what they counted without it
  -- (an import pseudo-user's labels are in none)
  SELECT u.is_system INTO v_system FROM users u WHERE u.id = p_user;
  IF p_kind IN ('compare', 'rate') AND NOT coalesce(v_system, false) THEN
    IF p_kind = 'compare' THEN
      SELECT array_agg(l.user_id ORDER BY l.id), array_agg(l.choice::text ORDER BY l.id) INTO v_users, v_cats
        FROM preference_labels l JOIN users u ON u.id = l.user_id WHERE l.task_id = p_task AND NOT u.is_system;
    ELSE
      SELECT array_agg(l.user_id ORDER BY l.id),
             array_agg(CASE WHEN l.good THEN 'good' ELSE 'bad' END ORDER BY l.id) INTO v_users, v_cats
        FROM ratings l JOIN users u ON u.id = l.user_id WHERE l.task_id = p_task AND NOT u.is_system;
    END IF;
    SELECT array_agg(u ORDER BY o), array_agg(c ORDER BY o) INTO v_prior_users, v_prior_cats
      FROM unnest(v_users, v_cats) WITH ORDINALITY AS z(u, c, o) WHERE u <> p_user;
    PERFORM il_add_agreement(t.project_id, p_kind,
      CASE WHEN p_kind = 'compare' THEN {_CATS} ELSE ARRAY['good', 'bad'] END,
      ARRAY[ROW(v_users, v_cats, v_prior_users, v_prior_cats)::il_item]);
  ELSIF p_kind = 'rank' AND NOT coalesce(v_system, false) THEN
    -- a rank task's items are its response pairs (x < y) both ranked: first better 'a', second 'b', or 'tie'.
    -- Loops over a handful of values, not one query: the query's cached plan cost ~100x under 32 writers.
    SELECT array_agg(l.user_id ORDER BY l.id), array_agg(l.ordering::text ORDER BY l.id) INTO v_users, v_ords
      FROM rankings l JOIN users u ON u.id = l.user_id WHERE l.task_id = p_task AND NOT u.is_system;
    SELECT array_agg(r.v::integer ORDER BY r.v::integer) INTO v_rids FROM json_array_elements_text(t.response_ids) r(v);
    v_items := '{{}}';
    FOR i IN 1..coalesce(array_length(v_rids, 1), 0) LOOP
      FOR j IN i + 1..array_length(v_rids, 1) LOOP
        v_iu := '{{}}'; v_ic := '{{}}'; v_pu := '{{}}'; v_pc := '{{}}';
        FOR k IN 1..coalesce(array_length(v_users, 1), 0) LOOP
          v_rx := il_group_of(v_ords[k]::json, v_rids[i]);
          v_ry := il_group_of(v_ords[k]::json, v_rids[j]);
          IF v_rx IS NOT NULL AND v_ry IS NOT NULL THEN
            v_c := CASE WHEN v_rx = v_ry THEN 'tie' WHEN v_rx < v_ry THEN 'a' ELSE 'b' END;
            v_iu := v_iu || v_users[k]; v_ic := v_ic || v_c;
            IF v_users[k] <> p_user THEN
              v_pu := v_pu || v_users[k]; v_pc := v_pc || v_c;
            END IF;
          END IF;
        END LOOP;
        v_items := v_items || ROW(v_iu, v_ic, v_pu, v_pc)::il_item;
      END LOOP;
    END LOOP;
    PERFORM il_add_agreement(t.project_id, p_kind, {_CATS}, v_items);
  END IF;
  -- last: the project's count rows are shared by every submit, so their lock is held briefly
  IF v_status <> t.status THEN
    INSERT INTO project_counts AS c (project_id, kind, status, n)
    SELECT t.project_id, t.kind, st, d FROM (VALUES (t.status::text, -1), ('done', 1)) v(st, d)
     ORDER BY st COLLATE "C"
    ON CONFLICT (project_id, kind, status) DO UPDATE SET n = c.n + excluded.n;
  END IF;
  RETURN QUERY SELECT v_lid, true, v_now, v_rid, t.prompt_id, v_n, v_status::text, v_aid;
END
$fn$;
"""

# One agreement item before and after a label: (users and categories with it, the same without it).
ITEM_TYPE = """
DO $do$ BEGIN
  IF to_regtype('il_item') IS NULL THEN
    CREATE TYPE il_item AS (users integer[], cats text[], prior_users integer[], prior_cats text[]);
  END IF;
END $do$;
"""

# The group (1 = best) a response is in within a ranking's ordering, or NULL when it is not ranked.
GROUP_OF = """
CREATE OR REPLACE FUNCTION il_group_of(p_ordering json, p_rid integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN  -- plpgsql loops, not a query: a SQL function is planned again on every call
  FOR g IN 0..json_array_length(p_ordering) - 1 LOOP
    FOR e IN 0..json_array_length(p_ordering -> g) - 1 LOOP
      IF (p_ordering -> g ->> e)::integer = p_rid THEN
        RETURN g + 1;
      END IF;
    END LOOP;
  END LOOP;
  RETURN NULL;
END
$fn$;
"""

ADD_AGREEMENT = """
CREATE OR REPLACE FUNCTION il_add_agreement(p_project integer, p_kind text, p_categories text[], p_items il_item[])
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
BEGIN  -- plpgsql keeps this statement's plan; as a SQL function it was planned on every submit (~0.7 ms)
  -- rows in key order ("C": Python's order too), so concurrent writers lock shared counters in one order
  INSERT INTO agreement_counts AS a (project_id, kind, what, user_a, user_b, x, y, n)
  SELECT p_project, p_kind, c.what, c.user_a, c.user_b, c.x, c.y, sum(c.n)::integer
    FROM (SELECT f.*, 1 AS n FROM unnest(p_items) i, il_item_counts(i.users, i.cats, p_categories) f
          UNION ALL
          SELECT f.*, -1 FROM unnest(p_items) i, il_item_counts(i.prior_users, i.prior_cats, p_categories) f) c
   GROUP BY c.what, c.user_a, c.user_b, c.x, c.y
  HAVING sum(c.n) <> 0
   ORDER BY c.what COLLATE "C", c.user_a, c.user_b, c.x COLLATE "C", c.y COLLATE "C"
  ON CONFLICT (project_id, kind, what, user_a, user_b, x, y) DO UPDATE SET n = a.n + excluded.n;
END
$fn$;
"""

# skip_task (db.services.assignment.skip_task): the task row locked as submits lock it, so a skip racing the
# user's own submit cannot leave a 'skipped' assignment beside a label; a repeat skip changes nothing.
SKIP = """
CREATE OR REPLACE FUNCTION il_skip(p_user integer, p_task integer, p_reason text, p_now timestamptz)
RETURNS TABLE (assignment_id integer, state text, assigned_at timestamptz, expires_at timestamptz,
               finished_at timestamptz, skip_reason text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
  v_project integer; v_now timestamptz;
  a assignments%ROWTYPE;
BEGIN
  SELECT t.project_id INTO v_project FROM tasks t WHERE t.id = p_task FOR UPDATE;
  v_now := coalesce(p_now, clock_timestamp());  -- read under the row lock, as il_submit does
  SELECT * INTO a FROM assignments s WHERE s.task_id = p_task AND s.user_id = p_user;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'task % is not assigned to this user', p_task USING ERRCODE = 'IL400';
  END IF;
  IF a.state = 'submitted' THEN
    RAISE EXCEPTION 'task % is already labelled; revise it from the history instead', p_task
          USING ERRCODE = 'IL400';
  END IF;
  IF a.state <> 'skipped' THEN
    UPDATE assignments s SET state = 'skipped', finished_at = v_now, skip_reason = p_reason WHERE s.id = a.id
    RETURNING * INTO a;
    INSERT INTO project_counts AS c (project_id, kind, status, n) VALUES (v_project, 'skipped', '', 1)
    ON CONFLICT (project_id, kind, status) DO UPDATE SET n = c.n + excluded.n;  -- the Dashboard's skip count
  END IF;
  RETURN QUERY SELECT a.id, a.state::text, a.assigned_at, a.expires_at, a.finished_at, a.skip_reason::text;
END
$fn$;
"""

INSTALL = [NEXT_TASK, ITEM_COUNTS, ITEM_TYPE, GROUP_OF, ADD_AGREEMENT, SUBMIT, SKIP]
DROP = [f"DROP FUNCTION IF EXISTS {f}" for f in ("il_skip", "il_submit", "il_add_agreement", "il_item_counts",
                                                  "il_group_of", "il_next_task")] + ["DROP TYPE IF EXISTS il_item"]


def install(conn: Any) -> None:
    """Create (or replace) the functions on a PostgreSQL connection (SQLAlchemy Connection); a no-op elsewhere."""
    if conn.dialect.name != "postgresql":
        return
    raw = conn.connection.driver_connection  # no parameters: psycopg leaves the '%' of RAISE formats alone
    for sql in INSTALL:
        raw.execute(sql)


def uninstall(conn: Any) -> None:
    if conn.dialect.name != "postgresql":
        return
    raw = conn.connection.driver_connection
    for sql in DROP:
        raw.execute(sql)


# ------------------------------------------------------------------------------------------- calling them

NEXT_TASK_CALL = ("SELECT * FROM il_next_task(%s::integer, %s::integer, %s::text, %s::interval, %s::timestamptz, "
                  "%s::float8)")
SKIP_CALL = "SELECT * FROM il_skip(%s::integer, %s::integer, %s::text, %s::timestamptz)"
SUBMIT_CALL = ("SELECT * FROM il_submit(%s::text, %s::integer, %s::integer, %s::timestamptz, %s::text, %s::text, "
               "%s::json, %s::text, %s::float8, %s::json, %s::boolean, %s::integer, %s::text, %s::text)")

# Engines whose database lacks the functions (made by an older revision's create_all, say): the services
# run their Python path there.
_MISSING: weakref.WeakSet[Any] = weakref.WeakSet()


def usable(session: Any) -> bool:
    """Whether a service may run its one-statement function here: PostgreSQL, the functions installed, and the
    session holding no writes of its own (inside a caller's write transaction the Python path joins it as a
    SAVEPOINT instead, so services still compose)."""
    from sqlalchemy.engine import Engine

    from db.session import _has_writes

    bind = session.get_bind()  # a session bound to one Connection (a migration's) keeps the Python path
    return (isinstance(bind, Engine) and bind.dialect.name == "postgresql" and bind not in _MISSING
            and not _has_writes(session))


def fits(value: Any) -> bool:
    """Whether `value` can be passed as an integer id (else the services' Python path says what is wrong)."""
    from db.services.errors import ID_RANGE

    return isinstance(value, int) and not isinstance(value, bool) and ID_RANGE[0] <= value <= ID_RANGE[1]


class FunctionFailed(Exception):
    """An IL-class error raised by a function: `code` (module docstring), the message, and the field (COLUMN)."""

    def __init__(self, code: str, message: str, field: str | None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


CALLS = 0  # function calls sent (bench/annotator_ops.py counts statements; these bypass SQLAlchemy's events)


def call(session: Any, sql: str, params: tuple[Any, ...]) -> list[Any] | None:
    """Run one function call in autocommit mode (its own transaction, inside the server) and end the session's
    transaction: the rows, or None when the functions are not installed (the caller runs its Python path).
    An IL-class error raises FunctionFailed; anything else propagates as SQLAlchemy's exception (a lost
    connection as OperationalError, which session_scope turns into "try again").

    On a pooled driver connection, not through the session: the session's connection, transaction and result
    machinery cost ~0.3 ms of client CPU per call, more than the server spends on a next_task."""
    import psycopg
    from psycopg.rows import namedtuple_row
    from sqlalchemy.exc import DBAPIError

    global CALLS
    if session.in_transaction():
        session.commit()  # read-only so far (usable() checked): nothing of the caller's is committed
    engine = session.get_bind()
    try:
        pooled = engine.raw_connection()  # pre-pinged: a connection the server dropped is replaced first
    except psycopg.Error as e:  # the server is down: as SQLAlchemy reports it through a session
        raise DBAPIError.instance(sql, params, e, psycopg.Error, connection_invalidated=True) from e
    conn = pooled.driver_connection
    try:
        conn.autocommit = True
        CALLS += 1
        with conn.cursor(row_factory=namedtuple_row) as cur:
            rows = cur.execute(sql, params, prepare=True).fetchall()
    except psycopg.Error as e:
        code = e.sqlstate or ""
        if code == "42883":  # undefined_function: a database without them
            _MISSING.add(engine)
            return None
        if code.startswith("IL"):
            raise FunctionFailed(code, e.diag.message_primary or str(e), e.diag.column_name) from None
        # a lost connection is not reused; a deadlock or a cancelled statement leaves a healthy one
        lost = conn.broken or conn.closed
        raise DBAPIError.instance(sql, params, e, psycopg.Error, connection_invalidated=lost) from e
    finally:
        try:
            if conn.broken or conn.closed:
                pooled.invalidate()
            else:
                conn.autocommit = False  # as the pool hands connections out
        except psycopg.Error:
            pooled.invalidate()  # never hand out a connection left in autocommit mode
        pooled.close()  # back to the pool
    return rows
