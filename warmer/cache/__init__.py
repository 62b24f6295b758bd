"""The shared cache directory as storage: its layout, manifests, checksums, integrity, trust, locks and findings."""
