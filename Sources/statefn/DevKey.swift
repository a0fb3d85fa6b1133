// `serve --dev-key`: a development API key with scope admin:*, so `make run` works out of the box with
// authentication on. Created on first start, kept in <data-dir>/dev-key (mode 0600), reused while it still works.
import StatefnAuth
import StatefnCore
import StatefnText

#if canImport(Glibc)
    import Glibc
#endif

enum DevKey {
    static let name = "dev"

    /// The key's token and file; a key that was revoked, expired or deleted is replaced.
    static func ensure(store: APIKeyStore, dataDirectory: String) async throws -> (token: String, path: String) {
        let path = dataDirectory + "/dev-key"
        if let text = readFile(path), let key = APIKey(parsing: text.trimming(while: \.isWhitespace)),
            let record = try await store.lookup(id: key.id),
            APIKey.constantTimeEqual(key.secretHash, record.secretHash), !record.isRevoked, record.expiresAtEpoch == nil
        {
            return (key.token, path)
        }
        let (key, _) = try await store.create(name: name, scopes: ["admin:*"], expiresInSeconds: nil)
        try writePrivateFile(path, key.token + "\n", directory: dataDirectory)
        return (key.token, path)
    }

    /// Written to a temporary file created with mode 0600, then renamed, so the key is never readable by others.
    private static func writePrivateFile(_ path: String, _ text: String, directory: String) throws {
        mkdir(directory, 0o700)
        let temporary = path + ".tmp"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw DevKeyError("cannot create \(temporary): errno \(errno)") }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard written == bytes.count, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw DevKeyError("cannot write \(path): errno \(errno)")
        }
    }
}

struct DevKeyError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}


/// A line for the person at the terminal, on stderr.
func printError(_ text: String) {
    let bytes = Array((text + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
