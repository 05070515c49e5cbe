"""Redis 7 holding the ingest stream: append-only file fsynced every second, so the buffer survives a restart.

Each service logs in as its own ACL user (localstack/redis_acl.py); `default` is the administrator.
"""

from __future__ import annotations

import redis

from localstack.model import LOOPBACK
from localstack.redis_acl import acl_config, service_users
from localstack.server import Log, Server

MAX_CLIENTS = 10_000


def render_config(port: int, users: str, data_dir: str) -> str:
    """`users`: the ACL lines (localstack/redis_acl.py); there is no `requirepass`, whose password
    would be the `default` user's in plain text."""
    return f"""# written by `fleet stack up` on every start; edit localstack/redis_server.py instead
bind {LOOPBACK}
port {port}
protected-mode yes
{users}daemonize no
supervised no
dir {data_dir}
appendonly yes
appendfsync everysec
appenddirname appendonly
save ""
logfile ""
loglevel notice
maxclients {MAX_CLIENTS}
"""


class Redis(Server):
    name = "redis"
    account = "redis"

    @property
    def folder(self) -> str:
        return "redis"

    def prepare(self, log: Log) -> None:
        self.own_folder(self.home)
        self.own_folder(self.home / "data")
        users = acl_config(self.credentials.redis, self.credentials.redis_users)
        self.write_private(self.home / "redis.conf", render_config(self.port, users, str(self.home / "data")))

    def command(self) -> list[str]:
        return [str(self.binaries.redis_server), str(self.home / "redis.conf")]

    def answers(self) -> bool:
        client = redis.Redis(
            host=LOOPBACK, port=self.port, password=self.credentials.redis, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            client.close()

    def provision(self, log: Log) -> None:
        """The service users as the credentials file says, also on a server started by an older
        version (its configuration is only read at start)."""
        client = redis.Redis(host=LOOPBACK, port=self.port, password=self.credentials.redis, socket_timeout=5)
        try:
            for user in service_users(self.credentials.redis_users):
                client.execute_command("ACL", "SETUSER", *user)
        finally:
            client.close()
