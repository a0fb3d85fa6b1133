// Array parameters as PostgreSQL's text form (`{"a","b",NULL}`), so that one prepared statement takes a whole
// batch of rows (`unnest($1::text[], ...)`) as ordinary text parameters.

public enum PostgresArray {
    /// The array literal of `elements`: each quoted, with `"` and `\` escaped, and nil as NULL. It reads back as
    /// text[] whatever the characters, and casts to bigint[] or jsonb[] when they are numbers or JSON.
    public static func text(_ elements: [String?]) -> String {
        var text = "{"
        text.reserveCapacity(elements.reduce(2) { $0 + ($1?.utf8.count ?? 4) + 3 })
        for (index, element) in elements.enumerated() {
            if index > 0 { text.append(",") }
            guard let element else {
                text.append("NULL")
                continue
            }
            text.append("\"")
            if element.utf8.contains(where: { $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
                for character in element.unicodeScalars {
                    if character == "\"" || character == "\\" { text.append("\\") }
                    text.unicodeScalars.append(character)
                }
            } else {
                text.append(element)
            }
            text.append("\"")
        }
        text.append("}")
        return text
    }
}
