"""A minimal Django project for postfork's tests: PostgreSQL (plain and Django's psycopg pool),
MariaDB (mysqlclient), Django's RedisCache and django-redis, served by gunicorn --preload
(``wsgi.py``) and Celery prefork (``celery_app.py``) with the one-line setup of the README:
``"postfork.integrations.django"`` in ``INSTALLED_APPS`` (``settings.py``)."""
