"""
Who may use the server: credential sources, their cache, REST credential
policy, revocations.
"""
