"""Loopback stand-ins for GitHub and the model servers, shared by every test."""
