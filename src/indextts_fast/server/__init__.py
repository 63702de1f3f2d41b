"""An OpenAI-compatible speech server over one Engine (`indextts-fast serve`): app.py (routes, errors,
auth, metrics, the scheduler), schemas.py (request bodies, torch-free), encode.py (audio formats)."""
