# The hand-written variant: what a careful user writes without postfork. Each worker builds
# its own clients right after the fork (the inherited ones are dropped).


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    import bench_app

    bench_app.build_clients()
