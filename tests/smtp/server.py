"""A real SMTP server for the email notifier's test (Debian's aiosmtpd).

Usage: server.py PORT OUTDIR [CERT KEY USER PASSWORD]

Writes each message it accepts to OUTDIR/N.eml (the raw message, as
received) and, with a certificate, requires STARTTLS and AUTH (LOGIN or
PLAIN) with USER and PASSWORD before MAIL. Prints "ready" once listening.
"""

import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Keep:
    def __init__(self, outdir):
        self.outdir = outdir
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        path = os.path.join(self.outdir, f"{self.n}.eml")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, path)
        return "250 OK"


def main():
    port = int(sys.argv[1])
    outdir = sys.argv[2]
    kwargs = {}
    if len(sys.argv) > 3:
        cert, key, user, password = sys.argv[3:7]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)

        def check(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            return AuthResult(success=ok)

        kwargs = dict(
            tls_context=ctx,
            require_starttls=True,
            authenticator=check,
            auth_required=True,
            auth_require_tls=True,
        )
    controller = Controller(Keep(outdir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
