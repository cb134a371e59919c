"""Seeing the platform: alert levels and the channels each reaches (`alert_levels`), alerts and
their grouping (`alerting`), CloudWatch metrics (`metrics`) and alarms as code (`alarms`), the
append-only security event log (`security_events`), connection probes (`healthcheck`), and the
ops dashboard's panels (`dashboard_panels`).
"""
