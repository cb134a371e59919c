"""Offers that learn: features, a calibrated redemption model, its registry, the offer policy,
the feedback bandit and ROI (pure library; the DAGs in dags/offer_*.py and dags/roi_sync.py wire it).
"""
