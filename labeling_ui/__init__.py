"""Streamlit labeling app (run: `streamlit run labeling_ui/app.py`)."""
