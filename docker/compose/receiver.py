"""The receiver of docker-compose.yaml: prints each delivery and answers 204."""

import http.server


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(self.path, self.headers.get("webhook-id"), body.decode(), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", 9000), Receiver).serve_forever()
