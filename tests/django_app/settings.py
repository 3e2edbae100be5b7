"""Settings from the environment (the tests' services): ``POSTGRES_DSN``, ``MYSQL_URL``,
``REDIS_URL``, ``DJANGO_CACHE_DB`` (the caches' Redis database), ``POSTFORK_DJANGO_TAG`` (names
this run's connections: PostgreSQL ``application_name``, cache key prefix) and
``POSTFORK_DJANGO_INTEGRATION`` (``0`` leaves postfork out, to measure the hazard).

The one line that matters is the first entry of ``INSTALLED_APPS``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping
from urllib.parse import urlparse, urlunparse


def build(env: Mapping[str, str]) -> Dict[str, Any]:
    pg = urlparse(env.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    my = urlparse(env.get("MYSQL_URL", "mysql://root@127.0.0.1:3306/postfork_test"))
    redis = urlparse(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    cache_url = urlunparse(redis._replace(path=f"/{env.get('DJANGO_CACHE_DB', '11')}"))
    tag = env.get("POSTFORK_DJANGO_TAG", "postfork-django")
    postgres = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": pg.path.lstrip("/") or "test",
        "USER": pg.username or "postgres",
        "PASSWORD": pg.password or "",
        "HOST": pg.hostname or "127.0.0.1",
        "PORT": str(pg.port or 5432),
    }
    apps = ["postfork.integrations.django"] if env.get("POSTFORK_DJANGO_INTEGRATION", "1") == "1" else []
    return {
        "SECRET_KEY": "postfork-tests",
        "DEBUG": False,
        "ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
        "USE_TZ": True,
        "ROOT_URLCONF": "django_app.urls",
        "INSTALLED_APPS": apps,
        "MIDDLEWARE": [],
        "DATABASES": {
            # a persistent connection per worker (and one in the master)
            "default": {**postgres, "CONN_MAX_AGE": None,
                        "OPTIONS": {"application_name": tag, "connect_timeout": 5}},
            # Django's psycopg pool: returned to the pool after each request
            "pooled": {**postgres, "CONN_MAX_AGE": 0,
                       "OPTIONS": {"application_name": f"{tag}-pool", "connect_timeout": 5,
                                   "pool": {"min_size": 1, "max_size": 2, "timeout": 10}}},
            "mariadb": {
                "ENGINE": "django.db.backends.mysql",
                "NAME": my.path.lstrip("/") or "test",
                "USER": my.username or "root",
                "PASSWORD": my.password or "",
                "HOST": my.hostname or "127.0.0.1",
                "PORT": str(my.port or 3306),
                "CONN_MAX_AGE": None,
                "OPTIONS": {"connect_timeout": 5, "read_timeout": 10, "write_timeout": 10},
            },
        },
        "CACHES": {
            "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                        "LOCATION": cache_url, "KEY_PREFIX": tag,
                        "OPTIONS": {"socket_timeout": 10}},
            "djredis": {"BACKEND": "django_redis.cache.RedisCache",
                        "LOCATION": cache_url, "KEY_PREFIX": f"{tag}-djr",
                        "OPTIONS": {"SOCKET_TIMEOUT": 10}},
        },
        "CELERY_BROKER_URL": env.get("CELERY_BROKER_URL", ""),
        "CELERY_RESULT_BACKEND": env.get("CELERY_RESULT_BACKEND", ""),
        "LOGGING_CONFIG": None,
    }


globals().update(build(os.environ))
