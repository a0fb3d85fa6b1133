// Reading STATEFN_* variables as flag defaults, so `--help` shows the value in force.
#if canImport(Glibc)
    import Glibc
#endif

enum Environment {
    static func value(_ name: String) -> String? {
        guard let raw = getenv(name) else { return nil }
        let value = String(cString: raw)
        return value.isEmpty ? nil : value
    }
}
