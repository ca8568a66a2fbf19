/// The shared secret an agent may require on client reports (ReportRequest, id 6).
///
/// Carrier: protobuf field 15 (length-delimited bytes) appended to the encoded `lars.ReportRequest`, which has
/// fields 1...4 only. Lars's parsers skip unknown fields, so a report with the secret still decodes everywhere, and
/// a Lars client that sends none keeps working against an agent that requires none (the default). Documented in
/// `Protos/switchyard_lb.proto`; not a generated message, so `Lars_ReportRequest` stays Lars's.
public enum ReportSecret {
    /// The field number of the secret in a ReportRequest body.
    public static let fieldNumber = 15
    private static let tag = UInt8(fieldNumber << 3 | 2)

    /// `body` (an encoded ReportRequest) with the secret appended as field 15.
    public static func appending(_ secret: [UInt8], to body: [UInt8]) -> [UInt8] {
        var out = body
        out.reserveCapacity(body.count + secret.count + 6)
        out.append(tag)
        var length = UInt64(secret.count)
        while length >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: length) | 0x80)
            length >>= 7
        }
        out.append(UInt8(length))
        out += secret
        return out
    }

    /// The bytes of field 15 in protobuf wire data (a body, or the unknown fields a decoder kept); nil when the
    /// field is absent or the data is malformed. The last occurrence wins, as protobuf's rule for a singular field.
    public static func extract(from data: some Collection<UInt8>) -> [UInt8]? {
        let bytes = Array(data)
        var index = 0
        var found: [UInt8]?
        func varint() -> UInt64? {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while index < bytes.count, shift < 64 {
                let byte = bytes[index]
                index += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { return value }
                shift += 7
            }
            return nil
        }
        while index < bytes.count {
            guard let key = varint() else { return nil }
            switch key & 7 {
            case 0: guard varint() != nil else { return nil }
            case 1: index += 8
            case 5: index += 4
            case 2:
                guard let length = varint(), length <= UInt64(bytes.count - index) else { return nil }
                if key >> 3 == UInt64(fieldNumber) { found = Array(bytes[index..<index + Int(length)]) }
                index += Int(length)
            default: return nil
            }
            if index > bytes.count { return nil }
        }
        return found
    }

    /// Compares two secrets in time independent of where they differ (the length is not hidden).
    public static func matches(_ given: [UInt8], _ expected: [UInt8]) -> Bool {
        guard given.count == expected.count else { return false }
        var difference: UInt8 = 0
        for i in 0..<given.count { difference |= given[i] ^ expected[i] }
        return difference == 0
    }
}
