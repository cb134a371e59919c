"""Notifiers: the one alert path of the project."""
