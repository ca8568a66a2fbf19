import SwitchyardCore

/// The PROXY protocol header (HAProxy's specification, versions 1 and 2) for a TCP over IPv4 connection: what
/// the proxy sends a backend first, so the backend learns who the client is.
public enum ProxyHeader {
    /// The 12 bytes that open a version 2 header.
    public static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    /// The header of a connection from `client` to `proxy` (the address the client connected to).
    public static func encode(_ version: ProxyHeaderVersion, client: IPv4Endpoint, proxy: IPv4Endpoint) -> [UInt8] {
        switch version {
        case .v1:
            return Array("PROXY TCP4 \(client.address) \(proxy.address) \(client.port) \(proxy.port)\r\n".utf8)
        case .v2:
            var bytes = v2Signature
            bytes.reserveCapacity(28)
            bytes.append(0x21)  // version 2, PROXY command
            bytes.append(0x11)  // AF_INET, STREAM
            bytes.append(contentsOf: [0x00, 12])  // address block length, big-endian
            for ip in [client.ip, proxy.ip] {
                bytes.append(contentsOf: [UInt8(ip >> 24), UInt8((ip >> 16) & 0xFF), UInt8((ip >> 8) & 0xFF),
                                          UInt8(ip & 0xFF)])
            }
            for port in [client.port, proxy.port] {
                bytes.append(contentsOf: [UInt8(port >> 8), UInt8(port & 0xFF)])
            }
            return bytes
        }
    }
}
