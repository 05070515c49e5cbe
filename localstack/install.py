"""Finding or installing the server binaries, and building TimescaleDB from Debian's source package.

Debian 12 packages Mosquitto 2, PostgreSQL 15 and Redis 7 but not TimescaleDB, so the extension is built
from the newer suite's source package (Apache-licensed part only) against `postgresql-server-dev-15`.
The newer suite is added as a `deb-src` entry in a private apt configuration under the cache folder, so
the machine's own apt sources and package lists are never touched. Every step that is already done is
skipped, so running this again costs a few `stat` calls.

As root with apt-get the packages are installed and the build installed; otherwise the exact commands
to run are raised in a `StackError`.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from localstack.errors import StackError

SERVER_PACKAGES = ("mosquitto", "mosquitto-clients", "postgresql-15", "postgresql-server-dev-15", "redis-server")
# The map page's browser test drives Debian's chromium (Playwright must not download a browser of its own)
TEST_PACKAGES = ("chromium",)
BUILD_PACKAGES = ("cmake", "gcc", "make", "dpkg-dev", "libssl-dev")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SOURCE_SUITE = "trixie"
DEB822_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
ONE_LINE_SOURCES = Path("/etc/apt/sources.list")
DYNSEC_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
BOOTSTRAP_FLAGS = ("-DAPACHE_ONLY=1", "-DREGRESS_CHECKS=OFF", "-DTAP_CHECKS=OFF", "-DWARNINGS_AS_ERRORS=OFF")
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Binaries:
    """Where the server programs are; found once, then handed to the process code."""

    mosquitto: Path
    dynsec_plugin: Path
    redis_server: Path
    pg_bin: Path

    @property
    def pg_config(self) -> Path:
        return self.pg_bin / "pg_config"


@dataclass(frozen=True, slots=True)
class AptSource:
    """One configured Debian mirror: its URI and the key it is signed with."""

    uri: str
    signed_by: str | None


# ---------------------------------------------------------------- pure helpers


def parse_deb822(text: str) -> list[AptSource]:
    """Mirrors from a deb822 `.sources` file whose suites include a release's base suite (not -security)."""
    found: list[AptSource] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        suites = fields.get("suites", "").split()
        if "deb" not in fields.get("types", "").split() or not any("-" not in s for s in suites):
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            found.append(AptSource(uri=uri.rstrip("/"), signed_by=fields.get("signed-by") or None))
    return found


def parse_one_line(text: str) -> list[AptSource]:
    """Mirrors from the classic one-line `sources.list` format, base suites only."""
    found: list[AptSource] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        signed_by = None
        if words and words[0].startswith("["):
            options = []
            while words:
                word = words.pop(0)
                options.append(word.strip("[]"))
                if word.endswith("]"):
                    break
            signed_by = next((o.split("=", 1)[1] for o in options if o.startswith("signed-by=")), None)
        if len(words) >= 2 and "-" not in words[1]:
            found.append(AptSource(uri=words[0].rstrip("/"), signed_by=signed_by))
    return found


def deb_src_lines(sources: Sequence[AptSource], suite: str = SOURCE_SUITE) -> str:
    """A private `sources.list` holding one `deb-src` line per configured mirror, for `suite`."""
    lines = []
    for source in dict.fromkeys(sources):
        option = f"[signed-by={source.signed_by}] " if source.signed_by else ""
        lines.append(f"deb-src {option}{source.uri} {suite} main\n")
    return "".join(lines)


def install_commands(packages: Sequence[str]) -> list[str]:
    return ["sudo apt-get update", f"sudo apt-get install -y --no-install-recommends {' '.join(packages)}"]


# ---------------------------------------------------------------- finding things


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleet-gateway"


def is_root() -> bool:
    return os.geteuid() == 0


def find_binaries() -> Binaries:
    """The installed server programs, or a `StackError` naming what is missing."""
    mosquitto = shutil.which("mosquitto") or _first_existing(["/usr/sbin/mosquitto"])
    plugin = next((p for pattern in DYNSEC_PLUGIN_GLOBS for p in sorted(glob.glob(pattern))), None)
    redis = shutil.which("redis-server") or _first_existing(["/usr/bin/redis-server"])
    missing = [
        name
        for name, found in (
            ("mosquitto", mosquitto),
            ("mosquitto_dynamic_security.so", plugin),
            ("redis-server", redis),
            ("postgres 15", _first_existing([str(PG_BIN / "postgres")])),
        )
        if not found
    ]
    if missing:
        raise StackError(
            f"missing server programs: {', '.join(missing)}. Run `fleet stack install` as root, or:\n  "
            + "\n  ".join(install_commands(SERVER_PACKAGES))
        )
    return Binaries(Path(str(mosquitto)), Path(str(plugin)), Path(str(redis)), PG_BIN)


def missing_packages(names: Sequence[str]) -> list[str]:
    """The Debian packages in `names` that are not installed (all of them when dpkg is absent)."""
    if not shutil.which("dpkg-query"):
        return list(names)
    missing = []
    for name in names:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False)
        if done.returncode != 0 or "install ok installed" not in done.stdout:
            missing.append(name)
    return missing


def timescaledb_installed(pg_config: Path) -> bool:
    if not pg_config.exists():
        return False
    libdir = _pg_config_value(pg_config, "--pkglibdir")
    sharedir = _pg_config_value(pg_config, "--sharedir")
    return (libdir / "timescaledb.so").exists() and (sharedir / "extension" / "timescaledb.control").exists()


def _pg_config_value(pg_config: Path, flag: str) -> Path:
    done = subprocess.run([str(pg_config), flag], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def _first_existing(paths: Sequence[str]) -> str | None:
    return next((p for p in paths if Path(p).exists()), None)


# ---------------------------------------------------------------- the imperative part


def ensure_installed(log: Log = print, *, cache_dir: Path | None = None, tests: bool = False) -> None:
    """Install the server packages and TimescaleDB if missing; skip every step already done.
    `tests` adds what the test suite needs besides the servers (`TEST_PACKAGES`).

    Without root (or without apt-get) nothing system-wide is changed: a `StackError` lists the commands.
    """
    cache = cache_dir or default_cache_dir()
    pg_config = PG_BIN / "pg_config"
    have_tsdb = timescaledb_installed(pg_config)
    wanted = [*SERVER_PACKAGES, *([] if have_tsdb else BUILD_PACKAGES), *(TEST_PACKAGES if tests else ())]
    missing = missing_packages(wanted)
    if missing:
        if not (is_root() and shutil.which("apt-get")):
            raise StackError(
                "these packages are needed: "
                + " ".join(missing)
                + "\nrun as root (or with sudo):\n  "
                + "\n  ".join(install_commands(missing))
                + "\nthen run `fleet stack install` again to build TimescaleDB."
            )
        log(f"installing {' '.join(missing)} with apt-get")
        _apt_install(missing, cache / "logs" / "apt-install.log")
    find_binaries()
    if have_tsdb:
        log("TimescaleDB is installed")
        return
    build = build_timescaledb(cache / "timescaledb", pg_config, log)
    if not is_root():
        raise StackError(
            f"TimescaleDB is built in {build} but installing it needs root; run:\n  sudo make -C {build} install"
        )
    log("installing TimescaleDB into the PostgreSQL 15 directories")
    _run(["make", "install"], build, cache / "logs" / "timescaledb-install.log")
    if not timescaledb_installed(pg_config):
        raise StackError(f"`make install` in {build} finished but timescaledb.so is still missing")


def _apt_install(packages: Sequence[str], log_file: Path) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], Path("/"), log_file, env=env)
    _run(["apt-get", "install", "-y", "--no-install-recommends", *packages], Path("/"), log_file, env=env)


def build_timescaledb(work: Path, pg_config: Path, log: Log) -> Path:
    """Fetch, configure and compile TimescaleDB under `work`; return its `build/` folder."""
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "build.log"
    source = _source_tree(work)
    if source is None:
        log(f"fetching the TimescaleDB source package from the {SOURCE_SUITE} suite")
        _fetch_source(work, log_file)
        source = _source_tree(work)
        if source is None:
            raise StackError(f"`apt-get source timescaledb` left no source tree in {work}; see {log_file}")
    build = source / "build"
    if not (build / "CMakeCache.txt").exists():
        log(f"configuring TimescaleDB in {source}")
        _run(["./bootstrap", *BOOTSTRAP_FLAGS, f"-DPG_CONFIG={pg_config}"], source, log_file)
    if not (build / "src" / "loader" / "timescaledb.so").exists():
        log("compiling TimescaleDB (about 30 s on two cores)")
        _run(["make", f"-j{os.cpu_count() or 2}"], build, log_file)
    return build


def _source_tree(work: Path) -> Path | None:
    trees = sorted(p for p in work.glob("timescaledb-*") if (p / "bootstrap").exists())
    return trees[-1] if trees else None


def _fetch_source(work: Path, log_file: Path) -> None:
    apt = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    text = DEB822_SOURCES.read_text() if DEB822_SOURCES.exists() else ""
    mirrors = parse_deb822(text) or parse_one_line(ONE_LINE_SOURCES.read_text() if ONE_LINE_SOURCES.exists() else "")
    if not mirrors:
        raise StackError(
            f"no Debian mirror found in {DEB822_SOURCES} or {ONE_LINE_SOURCES}; configure apt's sources first"
        )
    (apt / "sources.list").write_text(deb_src_lines(mirrors))
    options = [
        f"-oDir::Etc::SourceList={apt / 'sources.list'}",
        f"-oDir::Etc::SourceParts={apt / 'sources.list.d'}",
        f"-oDir::State::Lists={apt / 'lists'}",
        f"-oDir::Cache={apt / 'cache'}",
        # as root apt would hand downloads to the `_apt` user, who cannot enter a private cache folder
        *(["-oAPT::Sandbox::User=root"] if is_root() else []),
    ]
    _run(["apt-get", *options, "update"], work, log_file)
    _run(["apt-get", *options, "source", "timescaledb"], work, log_file)


def _run(cmd: Sequence[str], cwd: Path, log_file: Path, env: dict[str, str] | None = None) -> None:
    """Run one step with its output appended to `log_file`; on failure quote the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}   (in {cwd})\n")
        out.flush()
        try:
            done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
        except OSError as exc:
            raise StackError(f"cannot run {cmd[0]}: {exc}") from None
    if done.returncode != 0:
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise StackError(f"`{' '.join(cmd)}` failed (exit {done.returncode}) in {cwd}; {log_file}:\n{tail}")
