"""An app that registers a bare psycopg connection: postfork can only retire it in workers."""

import os

import psycopg

import postfork

DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

conn = postfork.register(psycopg.connect(DSN, autocommit=True))
conn.execute("SELECT 1")
