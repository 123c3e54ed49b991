//! MQTT 3.1.1 client for the Mosquitto comparison: QoS 1, persistent sessions
//! (`clean_session = false`), each client subscribed to its own topic; a message to
//! connection `j` is a PUBLISH to `{prefix}/{j}`. Packets are encoded and decoded by
//! rumqttc's `mqttbytes` codec (the client event loop is not used). No TLS (loopback).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Delivery, PeerCmd};
use crate::devices::Shared;
use crate::sched::{self, TextStamp};

/// Largest packet accepted or sent.
const MAX_PACKET: usize = 64 * 1024;
/// Commands written per flush at most.
const MAX_COALESCE: usize = 64;
/// Most packets handled per read before writing replies (bounded inner loop).
const MAX_PACKETS_PER_READ: usize = 1 << 16;
/// Keep-alive announced in CONNECT; a PINGREQ goes out at half of it.
const KEEP_ALIVE_SECS: u16 = 120;

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct MqttOpts {
    /// The broker's listener (loopback).
    pub addr: SocketAddr,
    /// Client ids are `{client_prefix}-{i}`, topics `{client_prefix}/{i}`: the same
    /// ids on every run, so the persistent sessions are reused, not piled up.
    pub client_prefix: String,
}

impl MqttOpts {
    /// Client id of connection `i`.
    pub fn client_id(&self, i: u32) -> String {
        format!("{}-{i}", self.client_prefix)
    }

    /// Topic connection `i` subscribes to.
    pub fn topic(&self, i: u32) -> String {
        format!("{}/{i}", self.client_prefix)
    }
}

/// Appends `p` to `out`.
pub fn encode(p: &Packet, out: &mut BytesMut) -> Result<()> {
    p.write(out, MAX_PACKET)
        .map(|_| ())
        .map_err(|e| anyhow!("encoding an MQTT packet: {e}"))
}

/// The next complete packet in `buf` (consumed), `None` if more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Packet>> {
    match Packet::read(buf, MAX_PACKET) {
        Ok(p) => Ok(Some(p)),
        Err(CodecError::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(anyhow!("decoding an MQTT packet: {e}")),
    }
}

/// QoS 1 packet ids 1..=65535 in turn.
fn next_pkid(cur: &mut u16) -> u16 {
    *cur = if *cur == u16::MAX { 1 } else { *cur + 1 };
    *cur
}

/// One connected, subscribed MQTT client.
pub struct MqttConn {
    stream: TcpStream,
    rbuf: BytesMut,
    out: BytesMut,
    shared: Arc<Shared>,
    pkid: u16,
    /// Unacknowledged PUBLISHes: packet id -> intended send time.
    inflight: HashMap<u16, u64>,
    /// Whether the broker had a session for this client id.
    pub session_present: bool,
    /// Deliveries to this client, from the CONNACK on (a persistent session's queue
    /// arrives while the subscription is still being made).
    delivery: Delivery,
}

impl MqttConn {
    async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .await
                .context("writing to the MQTT broker")?;
            self.out.clear();
        }
        Ok(())
    }

    async fn read_more(&mut self, until: Instant) -> Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        let n = tokio::time::timeout_at(until, self.stream.read_buf(&mut self.rbuf))
            .await
            .map_err(|_| anyhow!("timed out waiting for the MQTT broker"))?
            .context("reading from the MQTT broker")?;
        if n == 0 {
            bail!("the MQTT broker closed the connection");
        }
        Ok(())
    }

    /// Connects as `opts.client_id(index)` with a persistent session and subscribes (QoS 1)
    /// to its own topic. Messages queued in the session are acknowledged and recorded as
    /// deliveries (those of an earlier run count as foreign).
    pub async fn connect(
        opts: &MqttOpts,
        index: u32,
        shared: Arc<Shared>,
        until: Instant,
    ) -> Result<Self> {
        let stream =
            tokio::time::timeout_at(until, crate::source::connect(opts.addr, index as usize))
                .await
                .map_err(|_| anyhow!("timed out connecting to {}", opts.addr))?
                .with_context(|| format!("connecting to {}", opts.addr))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let mut c = Self {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(1024),
            shared,
            pkid: 0,
            inflight: HashMap::new(),
            session_present: false,
            delivery: Delivery::new(index),
        };
        let mut connect = Connect::new(opts.client_id(index));
        connect.clean_session = false;
        connect.keep_alive = KEEP_ALIVE_SECS;
        encode(&Packet::Connect(connect), &mut c.out)?;
        c.flush().await?;
        // Bounded by `until`.
        let ConnAck {
            session_present,
            code,
        } = loop {
            match decode(&mut c.rbuf)? {
                Some(Packet::ConnAck(a)) => break a,
                Some(other) => bail!("expected CONNACK, got {other:?}"),
                None => c.read_more(until).await?,
            }
        };
        if code != ConnectReturnCode::Success {
            bail!("the broker refused the connection: {code:?}");
        }
        c.session_present = session_present;
        let pkid = next_pkid(&mut c.pkid);
        let mut sub = Subscribe::new(opts.topic(index), QoS::AtLeastOnce);
        sub.pkid = pkid;
        encode(&Packet::Subscribe(sub), &mut c.out)?;
        c.flush().await?;
        // Bounded by `until`.
        loop {
            match decode(&mut c.rbuf)? {
                Some(Packet::SubAck(ack)) if ack.pkid == pkid => {
                    if !matches!(
                        ack.return_codes.first(),
                        Some(SubscribeReasonCode::Success(QoS::AtLeastOnce))
                    ) {
                        bail!("subscription refused: {:?}", ack.return_codes);
                    }
                    break;
                }
                Some(Packet::Publish(p)) => {
                    // Queued in the persistent session (this run's backlog, or an
                    // earlier run's leftovers): acknowledge, record.
                    c.ack_publish(&p)?;
                    c.delivery.record(&c.shared, &p.payload);
                }
                Some(_) => {}
                None => {
                    c.flush().await?;
                    c.read_more(until).await?;
                }
            }
        }
        c.flush().await?;
        Ok(c)
    }

    fn ack_publish(&mut self, p: &Publish) -> Result<()> {
        if p.qos == QoS::AtLeastOnce {
            encode(&Packet::PubAck(PubAck::new(p.pkid)), &mut self.out)?;
        }
        Ok(())
    }

    fn queue_publish(&mut self, topic: String, payload: String, intended_ns: u64) -> Result<()> {
        let pkid = next_pkid(&mut self.pkid);
        let mut p = Publish::from_bytes(topic, QoS::AtLeastOnce, Bytes::from(payload));
        p.pkid = pkid;
        encode(&Packet::Publish(p), &mut self.out)?;
        self.inflight.insert(pkid, intended_ns);
        Ok(())
    }

    /// Handles every complete packet in the read buffer: deliveries are recorded and
    /// acknowledged, PUBACKs accepted (the caller flushes).
    fn handle_buffered(&mut self, delivery: &mut Delivery) -> Result<()> {
        for _ in 0..MAX_PACKETS_PER_READ {
            match decode(&mut self.rbuf)? {
                None => return Ok(()),
                Some(Packet::Publish(p)) => {
                    self.ack_publish(&p)?;
                    delivery.record(&self.shared, &p.payload);
                }
                Some(Packet::PubAck(a)) => {
                    if let Some(intended) = self.inflight.remove(&a.pkid) {
                        super::on_accepted(&self.shared, intended);
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The traffic loop. Ends on [`PeerCmd::Close`], a closed channel, an error or the
    /// shared deadline.
    pub async fn run(
        mut self,
        me: u32,
        opts: Arc<MqttOpts>,
        mut rx: mpsc::UnboundedReceiver<PeerCmd>,
    ) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let deadline = tokio::time::sleep_until(shared.deadline);
        tokio::pin!(deadline);
        let ping_every = Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 2);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut delivery = std::mem::replace(&mut self.delivery, Delivery::new(me));
        // Packets that arrived with the end of the subscription are already buffered.
        self.handle_buffered(&mut delivery)?;
        self.flush().await?;
        loop {
            tokio::select! {
                biased;
                () = &mut deadline => return Ok(()),
                cmd = rx.recv() => {
                    let mut cmd = cmd;
                    for _ in 0..MAX_COALESCE {
                        match cmd {
                            Some(PeerCmd::Send { to, stamp }) => {
                                let payload = sched::text_payload(shared.payload_bytes, TextStamp {
                                    nonce: shared.run_nonce, to, stamp,
                                });
                                self.queue_publish(opts.topic(to), payload, stamp.intended_ns)?;
                                super::on_written(&shared, stamp.intended_ns);
                            }
                            Some(PeerCmd::Close) | None => {
                                encode(&Packet::Disconnect, &mut self.out)?;
                                self.flush().await?;
                                return Ok(());
                            }
                        }
                        match rx.try_recv() {
                            Ok(next) => cmd = Some(next),
                            Err(_) => break,
                        }
                    }
                    self.flush().await?;
                }
                _ = ping.tick() => {
                    encode(&Packet::PingReq, &mut self.out)?;
                    self.flush().await?;
                }
                n = self.stream.read_buf(&mut self.rbuf) => {
                    let n = n.context("reading from the MQTT broker")?;
                    if n == 0 {
                        bail!("the MQTT broker closed the connection");
                    }
                    self.handle_buffered(&mut delivery)?;
                    if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                        self.rbuf.reserve(16 * 1024);
                    }
                    self.flush().await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn publish_round_trips_through_the_codec_in_pieces() {
        let opts = MqttOpts {
            addr: "127.0.0.1:11883".parse().unwrap(),
            client_prefix: "hwlg".into(),
        };
        assert_eq!(opts.client_id(7), "hwlg-7");
        assert_eq!(opts.topic(7), "hwlg/7");
        let payload = "p".repeat(100);
        let mut p = Publish::new(opts.topic(3), QoS::AtLeastOnce, payload.clone());
        p.pkid = 513;
        let mut wire = BytesMut::new();
        encode(&Packet::Publish(p), &mut wire).unwrap();
        encode(&Packet::PubAck(PubAck::new(513)), &mut wire).unwrap();
        // QoS 1 PUBLISH: type 3, flags 0b0010; remaining length = 2 + 6 + 2 + 100.
        assert_eq!(&wire[..2], &[0x32, 110]);
        let all = wire.clone();
        // Fed one byte at a time, nothing decodes before the packet is complete.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.extend_from_slice(&[*b]);
            if let Some(p) = decode(&mut buf).unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got.len(), 2);
        let Packet::Publish(back) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(
            (back.topic.as_str(), back.pkid, back.qos),
            ("hwlg/3", 513, QoS::AtLeastOnce)
        );
        assert_eq!(&back.payload[..], payload.as_bytes());
        assert_eq!(got[1], Packet::PubAck(PubAck::new(513)));
        assert!(buf.is_empty());
    }

    #[test]
    fn persistent_connect_and_garbage() {
        let mut c = Connect::new("hwlg-1");
        c.clean_session = false;
        c.keep_alive = KEEP_ALIVE_SECS;
        let mut wire = BytesMut::new();
        encode(&Packet::Connect(c), &mut wire).unwrap();
        // Connect flags byte (after "MQTT" and level 4): clean session bit clear.
        let flags_at = 2 + 6 + 1;
        assert_eq!(wire[flags_at - 1], 4);
        assert_eq!(wire[flags_at] & 0x02, 0);
        let mut bad = BytesMut::from(&[0xff_u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(decode(&mut bad).is_err());
    }

    #[test]
    fn packet_ids_skip_zero() {
        let mut cur = u16::MAX - 1;
        assert_eq!(next_pkid(&mut cur), u16::MAX);
        assert_eq!(next_pkid(&mut cur), 1);
        assert_eq!(next_pkid(&mut cur), 2);
    }

    /// A scripted broker on 127.0.0.1: persistent-session CONNECT, SUBSCRIBE (with a
    /// stale message from an earlier run and one of this run queued right behind the
    /// SUBACK), one QoS 1 message to ourselves delivered twice, PUBACKs both ways,
    /// DISCONNECT.
    #[tokio::test]
    async fn connects_subscribes_sends_receives_against_a_scripted_broker() {
        use crate::sched::Stamp;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let next = async |sock: &mut TcpStream, buf: &mut BytesMut| -> Packet {
                for _ in 0..1000 {
                    if let Some(p) = decode(buf).unwrap() {
                        return p;
                    }
                    let n = sock.read_buf(buf).await.unwrap();
                    assert!(n > 0, "client closed early");
                }
                panic!("no packet")
            };
            let Packet::Connect(c) = next(&mut sock, &mut buf).await else {
                panic!()
            };
            assert_eq!((c.client_id.as_str(), c.clean_session), ("hwlg-0", false));
            let mut out = BytesMut::new();
            encode(
                &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, true)),
                &mut out,
            )
            .unwrap();
            sock.write_all(&out).await.unwrap();
            let Packet::Subscribe(sub) = next(&mut sock, &mut buf).await else {
                panic!()
            };
            assert_eq!(sub.filters[0].path, "hwlg/0");
            assert_eq!(sub.filters[0].qos, QoS::AtLeastOnce);
            let mut out = BytesMut::new();
            let ack = rumqttc::mqttbytes::v4::SubAck::new(
                sub.pkid,
                vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            );
            encode(&Packet::SubAck(ack), &mut out).unwrap();
            let mut stale = Publish::new("hwlg/0", QoS::AtLeastOnce, "from an earlier run");
            stale.pkid = 900;
            encode(&Packet::Publish(stale), &mut out).unwrap();
            // Queued for us by this run while we were offline (the backlog scenario).
            let queued = sched::text_payload(
                100,
                TextStamp {
                    nonce: 7,
                    to: 0,
                    stamp: Stamp {
                        intended_ns: 0,
                        msg_no: 99,
                    },
                },
            );
            let mut queued = Publish::new("hwlg/0", QoS::AtLeastOnce, queued);
            queued.pkid = 901;
            encode(&Packet::Publish(queued), &mut out).unwrap();
            sock.write_all(&out).await.unwrap();
            assert_eq!(
                next(&mut sock, &mut buf).await,
                Packet::PubAck(PubAck::new(900))
            );
            assert_eq!(
                next(&mut sock, &mut buf).await,
                Packet::PubAck(PubAck::new(901))
            );
            let Packet::Publish(mut p) = next(&mut sock, &mut buf).await else {
                panic!()
            };
            assert_eq!((p.topic.as_str(), p.qos), ("hwlg/0", QoS::AtLeastOnce));
            let mut out = BytesMut::new();
            encode(&Packet::PubAck(PubAck::new(p.pkid)), &mut out).unwrap();
            p.pkid = 7;
            encode(&Packet::Publish(p.clone()), &mut out).unwrap();
            p.dup = true;
            encode(&Packet::Publish(p), &mut out).unwrap();
            sock.write_all(&out).await.unwrap();
            assert_eq!(
                next(&mut sock, &mut buf).await,
                Packet::PubAck(PubAck::new(7))
            );
            assert_eq!(
                next(&mut sock, &mut buf).await,
                Packet::PubAck(PubAck::new(7))
            );
            assert_eq!(next(&mut sock, &mut buf).await, Packet::Disconnect);
        });

        let deadline = Instant::now() + Duration::from_secs(20);
        let shared = Arc::new(Shared::new(7, 100, 1, Duration::ZERO, deadline).unwrap());
        shared.window_start_ns.store(0, Ordering::Relaxed);
        shared.window_end_ns.store(u64::MAX, Ordering::Relaxed);
        let opts = Arc::new(MqttOpts {
            addr,
            client_prefix: "hwlg".into(),
        });
        let conn = MqttConn::connect(&opts, 0, Arc::clone(&shared), deadline)
            .await
            .unwrap();
        assert!(conn.session_present);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(conn.run(0, Arc::clone(&opts), rx));
        let stamp = Stamp {
            intended_ns: shared.now_ns(),
            msg_no: 0,
        };
        tx.send(PeerCmd::Send { to: 0, stamp }).unwrap();
        let c = &shared.c;
        for _ in 0..2000 {
            if c.duplicates.load(Ordering::Relaxed) >= 1 && c.accepted.load(Ordering::Relaxed) >= 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.foreign.load(Ordering::Relaxed), 1);
        assert_eq!(c.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(c.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(c.accepted.load(Ordering::Relaxed), 1);
        tx.send(PeerCmd::Close).unwrap();
        task.await.unwrap().unwrap();
        server.await.unwrap();
    }
}
