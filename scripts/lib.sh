# Shared setup steps for scripts/run and scripts/test. Each step is idempotent and quiet when
# there is nothing to do, so both commands work on a fresh Debian machine and stay fast after.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

log() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0")" "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  # Install Debian packages only when a command they provide is missing.
  log "installing Debian packages: $*"
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
  # $1: requirements file. Reinstall only when it changed since the last install.
  local req="$ROOT/$1" stamp="$VENV/.installed-$1"
  if [ ! -x "$PY" ]; then
    command -v python3.11 >/dev/null || command -v python3 >/dev/null || apt_install python3 python3-venv
    "$(command -v python3.11 || command -v python3)" -m venv "$VENV" \
      || { apt_install python3-venv; "$(command -v python3.11 || command -v python3)" -m venv "$VENV"; }
  fi
  if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ] || [ "$ROOT/requirements.txt" -nt "$stamp" ]; then
    log "installing Python packages from $1"
    "$PY" -m pip install -q --upgrade pip >/dev/null
    "$PY" -m pip install -q -r "$req"
    touch "$stamp"
  fi
}

redis_answers() { "$PY" - "$REDIS_URL" <<'PYEOF' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PYEOF
}

ensure_redis() {
  export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
  redis_answers && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis_answers && return 0; sleep 0.1; done
  log "Redis does not answer at $REDIS_URL"; return 1
}

postgres_answers() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ensure_postgres() {
  # Returns non-zero when PostgreSQL is not available (the caller decides whether that is fatal).
  postgres_answers && return 0
  if ls /etc/postgresql >/dev/null 2>&1; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >/dev/null 2>&1 || true
    for _ in $(seq 50); do postgres_answers && return 0; sleep 0.2; done
  fi
  return 1
}

ensure_chromium() {
  [ -x /usr/bin/chromium ] || apt_install chromium fonts-noto-cjk
  fc-list 2>/dev/null | grep -qi "noto.*cjk" || apt_install fonts-noto-cjk
}

ensure_node() {
  command -v node >/dev/null || apt_install nodejs
}

ensure_gettext() {
  command -v msgfmt >/dev/null || apt_install gettext
}

compile_messages() {
  # The .mo files are build output (gitignored): compiled from locale/*/LC_MESSAGES/django.po.
  ensure_gettext
  "$PY" manage.py compilemessages -v 0 --ignore .venv --ignore staticfiles --ignore .run --ignore .git
}
