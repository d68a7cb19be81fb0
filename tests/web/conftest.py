from tests.helpers.records_fixtures import db_url, postgres_server

__all__ = ["db_url", "postgres_server"]
