// One node of an independent Amino-protocol DHT for treecast's lab: js-libp2p's kad-dht on
// /ipfs/kad/1.0.0 in server mode over TCP (noise + yamux), with identify, ping, AutoNAT and a
// circuit relay v2 server, as public Amino nodes run. Started by scripts/amino-dht; see there.
//
//   node amino-dht-node.mjs PORT CONTROL_PORT [BOOTSTRAP_MULTIADDR...]
//
// Prints its listen multiaddrs (one a line) once it listens, then dials the bootstrap peers
// (retrying, they may start later). Serves on 127.0.0.1:CONTROL_PORT:
//   GET /providers  the provider records it holds: [{"key": base32 multihash, "peer": id}]
//   GET /seen       every peer that opened a connection with it: [{"peer", "addr", "at"}]
//   GET /routing    peers in its routing table

// Node 20 lacks Promise.withResolvers (Node 22), which libp2p 3 uses.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((a, b) => { resolve = a; reject = b })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { autoNAT } = await import('@libp2p/autonat')
const { circuitRelayServer } = await import('@libp2p/circuit-relay-v2')
const { kadDHT } = await import('@libp2p/kad-dht')
const { MemoryDatastore } = await import('datastore-core')
const { multiaddr } = await import('@multiformats/multiaddr')
const http = await import('node:http')

const [port, control, ...bootstrap] = process.argv.slice(2)

// The public DHT hands out public addresses only (js: removePrivateAddressesMapper, go: its
// address filter), so that nobody dials a peer at 127.0.0.1 or a LAN address. The lab's internet
// is 198.18.0.0/16 (its NATed LANs are 198.19/16), which js counts as private, so the same rule
// is written out here: an address is public if it starts at a host in 198.18/16 (relayed
// addresses too: they start at the relay). AMINO_PUBLIC_PREFIX changes it (/ip4/127.0.0.1/ for
// nodes all on one machine's loopback).
const publicPrefix = process.env.AMINO_PUBLIC_PREFIX ?? '/ip4/198.18.'
function labPublicAddresses (peer) {
  return { ...peer, multiaddrs: peer.multiaddrs.filter(a => a.toString().startsWith(publicPrefix)) }
}
const datastore = new MemoryDatastore()
const node = await createLibp2p({
  datastore,
  addresses: { listen: [`/ip4/0.0.0.0/tcp/${port}`] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  // The lab's hosts are in 198.18/15, which js-libp2p deems private: allow dialling them.
  connectionGater: { denyDialMultiaddr: () => false },
  services: {
    identify: identify(),
    ping: ping(),
    autoNAT: autoNAT(),
    // Amino's public nodes relay for NATed peers; here without the default 2 min / 128 KiB
    // circuit limits, so a NATed publisher can serve a small tree through it.
    relay: circuitRelayServer({ reservations: { maxReservations: 128, applyDefaultLimit: false } }),
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: false,
      peerInfoMapper: labPublicAddresses,
      allowQueryWithZeroPeers: true
    })
  }
})

const seen = []
node.addEventListener('connection:open', (ev) => {
  const c = ev.detail
  seen.push({ peer: c.remotePeer.toString(), addr: c.remoteAddr.toString(), at: Date.now() })
})

for (const a of node.getMultiaddrs()) console.log(a.toString())

async function providers () {
  const out = []
  for await (const e of datastore.query({ prefix: '/dht/provider/' })) {
    const parts = e.key.toString().split('/')
    out.push({ key: parts[3], peer: parts[4] })
  }
  return out
}

async function routing () {
  const out = []
  for (const p of node.services.dht.routingTable?.kb?.toIterable?.() ?? []) {
    out.push(p.peerId.toString())
  }
  return out
}

http.createServer(async (req, res) => {
  try {
    let body
    if (req.url === '/providers') body = await providers()
    else if (req.url === '/seen') body = seen
    else if (req.url === '/routing') body = await routing()
    else { res.writeHead(404); res.end(); return }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  } catch (e) {
    res.writeHead(500); res.end(String(e))
  }
}).listen(Number(control), '127.0.0.1')

for (const b of bootstrap) {
  (async () => {
    for (let i = 0; i < 60; i++) {
      try { await node.dial(multiaddr(b)); return } catch { await new Promise(r => setTimeout(r, 500)) }
    }
    console.error(`could not reach bootstrap peer ${b}`)
  })()
}

const stop = async () => { await node.stop(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
