# The unmanaged variant: no post_fork; every worker uses the master's connections.
