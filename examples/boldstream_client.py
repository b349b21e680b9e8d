import json
import socket
import sys


class Boldstream:
    """boldstream's feedback protocol: one JSON object per line each way."""

    def __init__(self, host="127.0.0.1", port=5011):
        self.sock = socket.create_connection((host, port))
        self.lines = self.sock.makefile("r", encoding="utf-8", newline="\n")
        self.last_id = 0
        self.pending = []  # feed messages that came before a reply

    def request(self, **fields):
        """Send a request; return its reply's result (raise on an error)."""
        self.last_id += 1
        fields["id"] = self.last_id
        self.sock.sendall((json.dumps(fields) + "\n").encode())
        while True:
            msg = self._read()
            if "ok" not in msg:
                self.pending.append(msg)
            elif msg.get("id") == self.last_id:
                if not msg["ok"]:
                    raise RuntimeError(msg["error"])
                return msg

    def messages(self):
        """Feed messages as they come, until the session ends."""
        while True:
            msg = self.pending.pop(0) if self.pending else self._read()
            if msg["type"] == "closing":
                return
            yield msg

    def _read(self):
        line = self.lines.readline()
        if not line:
            raise ConnectionError("boldstream closed the connection")
        return json.loads(line)


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 5011
    bs = Boldstream(host, port)
    bs.request(type="subscribe", topics=["volume", "trial", "run"])
    status = bs.request(type="get", what="status")["result"]
    print("following", status["session"], "volumes so far:", status["counts"]["received"], flush=True)
    for msg in bs.messages():
        kind = msg["type"]
        if kind == "volume":
            fd = "-" if msg["fd"] is None else f"{msg['fd']:.2f}"
            print(f"run {msg['run']} volume {msg['index']}: FD {fd} mm, mean {msg['mean']:.1f}")
        elif kind == "feedback":
            print("  feedback", {v["name"]: round(v["smoothed"], 3) for v in msg["values"]})
        elif kind == "trial":
            best = msg["top"][0]
            print(f"trial {msg['trial']}: shown {msg['image_id']}, best {best['id']} ({msg['value']:.3f})")
        elif kind == "reconstruction":
            print(f"trial {msg['trial']}: reconstruction {msg['path']}")
        elif kind == "run":
            print(f"run {msg['run']} {msg['status']}")
        elif kind == "dropped":
            print(f"(fell behind: {msg['missed']} messages missed)")
    print("session ended")
