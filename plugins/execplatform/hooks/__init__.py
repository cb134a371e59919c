"""Hooks for services that no installed provider covers."""
