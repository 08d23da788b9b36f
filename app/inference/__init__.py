"""The inference API: serves the registry's `production` model (see app.inference.app)."""
