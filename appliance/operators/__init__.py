"""Privacy-computing operators: one package per family (psi, pir, stats, fl), plus the proof
operator `count` that exercises the multi-party runtime end to end.

An operator is a protocol per role (`Operator.run(ctx)`): it gets its role, a session to each
other party, its local data set, its parameters and a progress/cancel handle, and returns its
outputs. It never reaches into the daemon, so every operator runs in tests with all parties in
one process over in-memory channels, and between real daemons over the mTLS channel.
"""
