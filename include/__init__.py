"""The platform's domain library: importable without Airflow, tested without a scheduler."""
