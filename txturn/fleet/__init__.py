"""
Sharing users, quotas, revocations and usage across servers through
Redis.
"""
