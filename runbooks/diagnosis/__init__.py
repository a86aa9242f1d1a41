"""Shared read-only parts of runbooks: readers, check bundles and parameter bases."""
