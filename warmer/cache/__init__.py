"""The shared cache directory: its layout, manifests, integrity, trust, locks and the status of each target."""
