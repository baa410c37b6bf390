"""Injected I/O for vtep.datapath.Datapath: frames and datagrams in, what it sent out.

Shared by the data path's unit tests and its fuzz tests, so that both drive the hot
loops through the same stand-ins for the TAP fd and the UDP sockets."""
import collections
import errno


class FakeIO:
    def __init__(self, tap_in=(), udp_in=(), too_big_above=None):
        self.tap_in = collections.deque(tap_in)   # frames the TAP will return
        self.udp_in = collections.deque(udp_in)   # (datagram, source ip) to receive
        self.sent = []        # (datagram, addr) that were sent
        self.tried = []       # every sendto call, failed ones too
        self.tap_out = []     # frames written to the TAP
        self.fail_send = None            # an exception every sendto raises
        self.too_big_above = too_big_above  # sendto of a longer datagram: EMSGSIZE

    def tap_readv(self, buffers):
        if not self.tap_in:
            raise BlockingIOError
        frame = self.tap_in.popleft()
        buffers[0][:len(frame)] = frame
        return len(frame)

    def tap_write(self, view):
        self.tap_out.append(bytes(view))
        return len(view)

    def sendto(self, view, addr):
        self.tried.append((bytes(view), addr))
        if self.fail_send:
            raise self.fail_send
        if self.too_big_above is not None and len(view) > self.too_big_above:
            raise OSError(errno.EMSGSIZE, "Message too long")
        self.sent.append((bytes(view), addr))

    def recvfrom_into(self, buf):
        if not self.udp_in:
            raise BlockingIOError
        data, src = self.udp_in.popleft()
        buf[:len(data)] = data
        return len(data), (src, 4789)
