"""Test tools of the AWS backend (never imported by the backend itself)."""
