"""HTTP-side helpers for flask_server.py: errors, upload parsing, feedback store, metrics, OpenAPI."""
