"""The built-in chat page in two headless Chromium tabs and a line client over TCP, in one room.

    python browser_chat.py PAGE_URL LINE_HOST:PORT [SCREENSHOT.png]

Exits 0 when every participant saw the others' messages and the join/leave notices; each wait
is bounded. Driven by tests/it/websocket.rs.
"""
import socket
import sys

from playwright.sync_api import expect, sync_playwright

WAIT_MS = 30_000
url, line_addr = sys.argv[1], sys.argv[2]
shot = sys.argv[3] if len(sys.argv) > 3 else None
host, port = line_addr.rsplit(":", 1)


class LineClient:
    def __init__(self):
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT_MS / 1000)
        self.file = self.sock.makefile("rwb")

    def send(self, line):
        self.file.write(line.encode() + b"\n")
        self.file.flush()

    def expect(self, text):
        while True:
            line = self.file.readline()
            assert line, f"line client: closed while waiting for {text!r}"
            if text in line.decode():
                return


def join(page, name):
    page.goto(url)
    log = page.locator("#log")
    expect(log).to_contain_text("Enter your name", timeout=WAIT_MS)
    page.fill("#text", name)
    page.press("#text", "Enter")
    expect(log).to_contain_text(f"Hello {name}!", timeout=WAIT_MS)
    return log


with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )
    context = browser.new_context(viewport={"width": 720, "height": 480})
    alice = context.new_page()
    alice_log = join(alice, "alice")
    bob = context.new_page()
    bob_log = join(bob, "bob")
    expect(alice_log).to_contain_text("bob joined the chat", timeout=WAIT_MS)

    carol = LineClient()
    carol.expect("Enter your name")
    carol.send("carol")
    carol.expect("Hello carol!")
    expect(alice_log).to_contain_text("carol joined the chat", timeout=WAIT_MS)
    expect(bob_log).to_contain_text("carol joined the chat", timeout=WAIT_MS)

    alice.fill("#text", "hello from the browser")
    alice.press("#text", "Enter")
    expect(bob_log).to_contain_text("alice: hello from the browser", timeout=WAIT_MS)
    carol.expect("alice: hello from the browser")

    carol.send("hello from nc")
    expect(alice_log).to_contain_text("carol: hello from nc", timeout=WAIT_MS)
    expect(bob_log).to_contain_text("carol: hello from nc", timeout=WAIT_MS)

    bob.fill("#text", "/list")
    bob.press("#text", "Enter")
    expect(bob_log).to_contain_text("Online (3): alice, bob, carol", timeout=WAIT_MS)

    bob.close()
    expect(alice_log).to_contain_text("bob left the chat", timeout=WAIT_MS)
    carol.expect("bob left the chat")
    if shot:
        alice.screenshot(path=shot)
    browser.close()
print("browser chat ok")
