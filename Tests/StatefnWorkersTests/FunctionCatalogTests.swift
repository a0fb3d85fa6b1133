import Foundation
import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(1))) struct FunctionCatalogTests {
    /// A fresh functions directory with both layouts, broken entries and names to ignore.
    private func makeDirectory() throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("statefn-catalog-\(UUID())").path
        let files = FileManager.default
        func write(_ path: String, _ text: String, executable: Bool = false) throws {
            let full = root + "/" + path
            try files.createDirectory(
                atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: full, atomically: true, encoding: .utf8)
            try files.setAttributes([.posixPermissions: executable ? 0o755 : 0o644], ofItemAtPath: full)
        }
        try write("plain", "#!/bin/sh\n", executable: true)
        try write("tuned", "#!/bin/sh\n", executable: true)
        try write("tuned.json", #"{"mode":"fork","timeout_ms":500}"#)
        try write("folder/handler", "#!/bin/sh\n", executable: true)
        try write("folder/function.json", #"{"max_workers":1}"#)
        try write("bare/handler", "#!/bin/sh\n", executable: true)
        try write("noexec", "#!/bin/sh\n")
        try write("nohandler/README", "nothing to run\n")
        try write("badmanifest", "#!/bin/sh\n", executable: true)
        try write("badmanifest.json", #"{"max_workers":"many"}"#)
        try write("brokenjson", "#!/bin/sh\n", executable: true)
        try write("brokenjson.json", "{")
        try write("_sdk/helper.py", "", executable: true)
        try write("README.md", "docs\n", executable: true)
        try write("Upper", "#!/bin/sh\n", executable: true)
        return root
    }

    @Test func scansBothLayoutsAndReportsBrokenFunctions() throws {
        let root = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let catalog = FunctionCatalog.scan(directory: root)
        let real = try #require(realpath(root, nil).map { String(cString: $0) })

        #expect(Set(catalog.functions.keys) == ["plain", "tuned", "folder", "bare"])
        #expect(Set(catalog.failures.keys) == ["noexec", "nohandler", "badmanifest", "brokenjson"])

        let plain = try #require(catalog.functions["plain"])
        #expect(plain.executable == real + "/plain")
        #expect(plain.workingDirectory == real)
        #expect(plain.manifest == FunctionManifest())

        let tuned = try #require(catalog.functions["tuned"])
        #expect(tuned.manifest.mode == .fork)
        #expect(tuned.manifest.timeoutMs == 500)

        let folder = try #require(catalog.functions["folder"])
        #expect(folder.executable == real + "/folder/handler")
        #expect(folder.workingDirectory == real + "/folder")
        #expect(folder.manifest.maxWorkers == 1)
        #expect(catalog.functions["bare"]?.manifest == FunctionManifest())

        #expect(catalog.failures["noexec"]?.contains("not an executable") == true)
        #expect(catalog.failures["nohandler"]?.contains("no handler") == true)
        #expect(catalog.failures["badmanifest"]?.contains("field max_workers") == true)
        #expect(catalog.failures["brokenjson"]?.contains("not valid JSON") == true)
    }

    @Test func relativeDirectoryGivesAbsolutePaths() throws {
        let root = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let catalog = FunctionCatalog.scan(directory: root + "/folder/..")
        #expect(catalog.functions["plain"]?.executable.hasPrefix("/") == true)
        #expect(catalog.functions["plain"]?.executable.contains("..") == false)
    }

    @Test func missingDirectoryIsEmpty() {
        let catalog = FunctionCatalog.scan(directory: "/nonexistent/statefn/functions")
        #expect(catalog.functions.isEmpty && catalog.failures.isEmpty)
    }

    @Test func theExampleFunctionsLoad() {
        let catalog = FunctionCatalog.scan(directory: Paths.functions)
        #expect(catalog.failures.isEmpty, "\(catalog.failures)")
        #expect(catalog.functions["counter"]?.manifest.mode == .warm)
        #expect(catalog.functions["cart"]?.manifest.mode == .warm)
        #expect(catalog.functions["vote"]?.manifest.mode == .fork)
        #expect(catalog.functions["_sdk"] == nil)
    }

    @Test(arguments: [("counter", true), ("a", true), ("a-b_c9", true), ("_sdk", false), ("README.md", false),
        ("Counter", false), ("9lives", false), ("", false), (String(repeating: "a", count: 63), true),
        (String(repeating: "a", count: 64), false)])
    func functionNames(name: String, valid: Bool) {
        #expect(FunctionCatalog.isFunctionName(name) == valid)
    }
}
