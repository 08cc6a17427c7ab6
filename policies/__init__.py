"""Routing policy: data (default.yaml), validated models, trigger detectors, the router."""
