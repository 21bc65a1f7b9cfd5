"""The local S3-compatible object store (s3proxy, filesystem backend)."""

from __future__ import annotations

import os
import shlex
import socket

from .config import (
    HOST,
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_LOGBACK,
    S3_POM,
    S3_REGION,
    S3_SECRET_KEY,
    Settings,
)
from .endpoints import Endpoint, endpoint_answers
from .host import require_binary
from .jvm import JvmService, ensure_maven_jars
from .service import ExternalService


def probe_http(sock: socket.socket) -> bool:
    """Any HTTP answer: an S3 endpoint refuses an unsigned request, but it answers."""
    sock.sendall(b"HEAD / HTTP/1.0\r\nHost: s3\r\n\r\n")
    return sock.recv(5) == b"HTTP/"


def s3_env_lines(endpoint: str, values: dict[str, str]) -> str:
    lines = [f"export S3_ENDPOINT={shlex.quote(endpoint)}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines)


class ExternalS3(ExternalService):
    """S3_ENDPOINT names a store we do not own: print what the user set, nothing else."""

    def env_line(self) -> str:
        names = ("S3_BUCKET", "S3_REGION", "S3_ACCESS_KEY", "S3_SECRET_KEY")
        values = {name: os.environ[name] for name in names if os.environ.get(name)}
        return s3_env_lines(self.value, values)


class S3(JvmService):
    """s3proxy (a real S3 API server: SigV4, pre-signed URLs, CORS) over jclouds'
    filesystem backend. The bucket is a directory under data/, created here."""

    name = "s3"
    port_setting = "STACK_S3_PORT"
    env_var = "S3_ENDPOINT"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "s3proxy.log", "s3proxy.pid")
        self.port = settings.s3_port
        self.props = self.home / "s3proxy.properties"

    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    process_marker = "org.gaul.s3proxy.Main"

    def write_properties(self) -> None:
        properties = {
            "s3proxy.endpoint": self.url(),
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": S3_ACCESS_KEY,
            "s3proxy.credential": S3_SECRET_KEY,
            # The browser PUTs to pre-signed URLs from the web client's origin.
            "s3proxy.cors-allow-all": "true",
            "jclouds.provider": "filesystem",
            "jclouds.filesystem.basedir": str(self.data),
            "jclouds.region": S3_REGION,
        }
        lines = ["# Written by scripts/stack.py on every start; edit the script, not this file."]
        lines += [f"{key}={value}" for key, value in properties.items()]
        self.props.write_text("\n".join(lines) + "\n")

    def launch(self) -> None:
        java = require_binary("java", "openjdk-17-jre-headless", auto_install=False)
        self.home.mkdir(parents=True, exist_ok=True)
        ensure_maven_jars("s3", S3_POM, self.libs, "~40 MB")
        self.write_properties()
        (self.data / S3_BUCKET).mkdir(parents=True, exist_ok=True)  # the bucket
        cmd = [
            java,
            "-Xmx256m",
            "-Djava.awt.headless=true",
            f"-Dlogback.configurationFile={S3_LOGBACK}",
            "-cp",
            f"{self.libs}/*",
            "org.gaul.s3proxy.Main",
            "--properties",
            str(self.props),
        ]
        self.spawn(cmd, "s3 (s3proxy)")

    def is_ready(self) -> bool:
        return endpoint_answers(Endpoint(HOST, self.port), probe_http)

    def env_line(self) -> str:
        values = {
            "S3_BUCKET": S3_BUCKET,
            "S3_REGION": S3_REGION,
            "S3_ACCESS_KEY": S3_ACCESS_KEY,
            "S3_SECRET_KEY": S3_SECRET_KEY,
        }
        return s3_env_lines(self.url(), values)
