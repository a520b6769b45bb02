"""
What watches the core through its one seam (events and a read-only
view): logs, JSON logs, metrics, usage records.
"""
