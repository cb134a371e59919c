"""Adversarial audits and leading indicators: the hard pass/fail gates (`gates`), the hostile-input
probes (`probes`), the check that alarms arrive (`alarm_check`), the daily indicators
(`indicators`) with their drift test (`drift`) and trend-change detector (`changepoint`), and the
daily digest (`digest`).
"""
