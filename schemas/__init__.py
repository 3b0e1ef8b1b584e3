"""What the data is: canonical events, their validation, and the pure referral model.

Nothing in this package does I/O; every function is a function of its inputs.
"""
