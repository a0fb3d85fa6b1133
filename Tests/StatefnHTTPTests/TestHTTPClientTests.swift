// The strict test client against a scripted peer: each way a connection can fail reaches the test as its own
// `TestHTTPError.Kind`, nothing is retried or read after a failed send unless the call asks for it, and malformed
// framing is refused. The tests elsewhere can only be as honest as this client.
import Foundation
import Glibc
import StatefnHTTP
import StatefnTestSupport
import Testing

@Suite(.timeLimit(.minutes(1)))
struct TestHTTPClientTests {
    static let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    @Test func aPortNobodyListensOnIsRefused() async throws {
        let port = try ScriptedPeer.unusedPort()
        let error = await #expect(throws: TestHTTPError.self) {
            _ = try await onThread { try newClient(port).request("GET", "/") }
        }
        #expect(error?.kind == .refused, "\(String(describing: error))")
    }

    @Test func aPeerThatClosesWithoutAnsweringIsClosedWithoutResponse() async throws {
        let kind = try await failureOfAGet { connection in
            _ = connection.readHead()
            connection.close()
        }
        #expect(kind == .closedWithoutResponse)
    }

    @Test func aBodyCutShortIsClosedMidResponse() async throws {
        let kind = try await failureOfAGet { connection in
            _ = connection.readHead()
            connection.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            connection.close()
        }
        #expect(kind == .closedMidResponse)
    }

    @Test(arguments: [
        "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",  // bare LF
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
    ])
    func malformedResponsesAreRefused(raw: String) async throws {
        let kind = try await failureOfAGet { connection in
            _ = connection.readHead()
            connection.write(raw)
            connection.close()
        }
        #expect(kind == .malformed)
    }

    @Test func chunkedResponsesAndInterimOnesAreRead() async throws {
        let peer = try ScriptedPeer { connection in
            _ = connection.readHead()
            connection.write(
                "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                    + "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Twice: a\r\nx-twice: b\r\n\r\n"
                    + "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n")
            connection.close()
        }
        defer { peer.stop() }
        let port = peer.port
        let response = try await onThread { try newClient(port).request("GET", "/") }
        #expect(response.status == 200)
        #expect(response.text == "hello world")
        #expect(response.header("X-TWICE") == "a, b")
        #expect(response.fields.map(\.name) == ["Transfer-Encoding", "X-Twice", "x-twice"])
    }

    @Test func aPeerThatStopsAnsweringTimesOut() async throws {
        let release = DispatchSemaphore(value: 0)
        let peer = try ScriptedPeer { connection in
            _ = connection.readHead()
            _ = release.wait(timeout: .now() + 30)
            connection.close()
        }
        defer { peer.stop() }
        let port = peer.port
        let error = await #expect(throws: TestHTTPError.self) {
            _ = try await onThread {
                let client = newClient(port)
                client.timeout = 0.2
                return try client.request("GET", "/")
            }
        }
        release.signal()
        #expect(error?.kind == .timedOut, "\(String(describing: error))")
    }

    /// The peer answers, then closes the kept-alive connection before the next request: the next request fails and
    /// says so, unless it asked for a retry on a fresh connection.
    @Test func aKeptAliveConnectionClosedMeanwhileFailsUnlessARetryIsAsked() async throws {
        let closed = DispatchSemaphore(value: 0)
        let peer = try ScriptedPeer { connection in
            _ = connection.readHead()
            connection.write(Self.ok)
            connection.close()
            closed.signal()
        }
        defer { peer.stop() }
        let port = peer.port
        let (failure, retried, connections) = try await onThread {
            let client = newClient(port)
            _ = try client.request("GET", "/first")
            guard closed.wait(timeout: .now() + 10) == .success else { throw TestHTTPError(description: "no close") }
            let failure: TestHTTPError?
            do throws(TestHTTPError) {
                _ = try client.request("GET", "/second")
                failure = nil
            } catch {
                failure = error
            }
            _ = try client.request("GET", "/third")
            guard closed.wait(timeout: .now() + 10) == .success else { throw TestHTTPError(description: "no close") }
            let retried = try client.request("GET", "/fourth", retry: .onceOnFreshConnection)
            return (failure, retried, client.connectionsOpened)
        }
        let error = try #require(failure, "a request on a connection the peer had closed did not fail")
        #expect([.closedWithoutResponse, .reset].contains(error.kind), "\(error)")
        #expect(error.description.contains("kept alive after 1 responses"), "\(error)")
        #expect(retried.text == "ok")
        // /first, /third (after the failure closed the connection), and the retry of /fourth.
        #expect(connections == 3)
    }

    /// The peer reads the head, answers 413 and closes with the body unread, as statefn does today (issue 13): the
    /// send is reset, and only a call that asks for it reads the answer after that.
    @Test func aFailedSendIsThrownUnlessAReadAfterItIsAsked() async throws {
        let peer = try ScriptedPeer { connection in
            _ = connection.readHead()
            connection.write("HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
            connection.reset()
        }
        defer { peer.stop() }
        let port = peer.port
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: 2 << 20)
        let error = await #expect(throws: TestHTTPError.self) {
            _ = try await onThread { try newClient(port).request("POST", "/", bodyBytes: body) }
        }
        #expect(error?.kind == .reset, "\(String(describing: error))")
        let lenient = try await onThread {
            try newClient(port).request("POST", "/", bodyBytes: body, readAfterFailedSend: true)
        }
        #expect(lenient.status == 413)
        #expect(lenient.text == "big")
    }

    @Test func defaultHeadersGoOutUnlessTheRequestNamesThem() async throws {
        try await withServer { server in
            let port = server.port
            let (plain, overridden) = try await onThread {
                let client = TestHTTPClient(port: port, defaultHeaders: ["X-Custom": "default"])
                return (try client.request("GET", "/"), try client.request("GET", "/", headers: ["x-CUSTOM": "mine"]))
            }
            #expect(plain.header("X-Custom") == "default")
            #expect(overridden.header("X-Custom") == "mine")
        }
    }
}

/// How a GET fails against a peer that runs `script` on the connection: the thrown error's kind (an issue is
/// recorded, and nil returned, if the GET succeeds).
private func failureOfAGet(_ script: @escaping @Sendable (ScriptedPeer.Connection) -> Void) async throws
    -> TestHTTPError.Kind?
{
    let peer = try ScriptedPeer(script)
    defer { peer.stop() }
    let port = peer.port
    let error = await #expect(throws: TestHTTPError.self) {
        _ = try await onThread { try newClient(port).request("GET", "/") }
    }
    return error?.kind
}

/// A peer on 127.0.0.1 that runs `script` on each connection it accepts, one at a time, on a thread of its own.
/// `@unchecked Sendable`: `listener` is set once in init; `stop` only shuts it down, which ends the accept loop.
final class ScriptedPeer: @unchecked Sendable {
    /// One accepted connection, as the script sees it.
    struct Connection {
        let fd: Int32

        /// Reads up to the end of a request head (and whatever body came with it).
        func readHead() -> [UInt8] {
            var received: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while received.firstRange(of: Array("\r\n\r\n".utf8)) == nil {
                let count = recv(fd, &chunk, chunk.count, 0)
                guard count > 0 else { break }
                received += chunk[..<count]
            }
            return received
        }

        func write(_ text: String) {
            let bytes = Array(text.utf8)
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }

        func close() { Glibc.close(fd) }

        /// Closes with SO_LINGER 0, so the client gets a reset whatever is unread.
        func reset() {
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            Glibc.close(fd)
        }
    }

    let port: Int
    private let listener: Int32

    init(_ script: @escaping @Sendable (Connection) -> Void) throws {
        (listener, port) = try Self.listen()
        let listener = listener
        Thread.detachNewThread {
            while true {
                let accepted = accept(listener, nil, nil)
                guard accepted >= 0 else { return }
                script(Connection(fd: accepted))
            }
        }
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// A port that was free a moment ago and that nothing listens on now.
    static func unusedPort() throws -> Int {
        let (fd, port) = try listen()
        close(fd)
        return port
    }

    private static func listen() throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && Glibc.listen(fd, 16) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard fd >= 0, bound else { throw TestHTTPError(description: "scripted peer: cannot listen: errno \(errno)") }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }
}
