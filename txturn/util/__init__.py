"""
Small tools every layer may use: logging and its throttles, rate limits,
files, privileged reads.
"""
