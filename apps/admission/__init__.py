"""Admission: the ordered steps a request passes before any model is called
(see pipeline.py for the machinery, steps.py for the steps)."""
