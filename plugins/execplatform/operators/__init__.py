"""Operators that wire the `include` library to Airflow connections."""
