//! [`Central`] and [`Link`] over btleplug (BlueZ over D-Bus on Linux). Deliberately thin:
//! it maps btleplug's types to the trait's and forwards streams into channels; every
//! decision is the source's.
//!
//! The adapter is opened lazily, at the first scan, and again after its event stream ended,
//! so a gateway started before its USB dongle (or before `bluetoothd`) starts using it when
//! it appears.

use btleplug::api::bleuuid::{uuid_from_u16, BleUuid};
use btleplug::api::{
    Central as _, CentralEvent as BtEvent, CharPropFlags, Characteristic, Manager as _,
    Peripheral as _, ScanFilter, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral};
use futures::StreamExt;
use tokio::sync::{mpsc, Mutex};

use super::central::{
    format_address, Address, Advertisement, BleError, Central, CentralEvent, GattCharacteristic,
    Link, Notification, Properties,
};
use super::EVENT_CHANNEL_CAPACITY;

/// The first Bluetooth adapter of the host.
#[derive(Default)]
pub struct BtleplugCentral {
    adapter: Mutex<Option<Adapter>>,
}

impl BtleplugCentral {
    /// A central that opens the adapter on first use.
    pub fn new() -> Self {
        Self::default()
    }

    async fn adapter(&self) -> Result<Adapter, BleError> {
        let mut slot = self.adapter.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let manager = Manager::new().await.map_err(|e| {
            BleError::NoAdapter(format!(
                "cannot reach BlueZ over the D-Bus system bus ({e}); is bluetoothd running?"
            ))
        })?;
        let adapter = manager
            .adapters()
            .await
            .map_err(|e| BleError::NoAdapter(format!("cannot list adapters: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| {
                BleError::NoAdapter(
                    "BlueZ reports no Bluetooth controller (check `bluetoothctl list`)".into(),
                )
            })?;
        *slot = Some(adapter.clone());
        Ok(adapter)
    }
}

fn short(uuid: &uuid::Uuid) -> Option<u16> {
    uuid.to_ble_u16()
}

async fn advertisement(
    adapter: &Adapter,
    id: &btleplug::platform::PeripheralId,
) -> Option<Advertisement> {
    let p = adapter.peripheral(id).await.ok()?;
    let props = p.properties().await.ok()??;
    Some(Advertisement {
        address: props.address.into_inner(),
        name: props.local_name.or(props.advertisement_name),
        services: props.services.iter().filter_map(short).collect(),
        rssi: props.rssi,
    })
}

impl Central for BtleplugCentral {
    type Link = BtleplugLink;

    async fn scan(&self) -> Result<mpsc::Receiver<CentralEvent>, BleError> {
        let adapter = self.adapter().await?;
        let mut stream = adapter
            .events()
            .await
            .map_err(|e| BleError::operation("event stream", e))?;
        adapter
            .start_scan(ScanFilter::default())
            .await
            .map_err(|e| BleError::operation("start scan", e))?;
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let out = match event {
                    BtEvent::DeviceDiscovered(id)
                    | BtEvent::DeviceUpdated(id)
                    | BtEvent::ServicesAdvertisement { id, .. } => {
                        match advertisement(&adapter, &id).await {
                            Some(a) => CentralEvent::Advertisement(a),
                            None => continue,
                        }
                    }
                    BtEvent::DeviceDisconnected(id) => match adapter.peripheral(&id).await {
                        Ok(p) => CentralEvent::Disconnected(p.address().into_inner()),
                        Err(_) => continue,
                    },
                    _ => continue,
                };
                if tx.send(out).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn connect(&self, address: Address) -> Result<BtleplugLink, BleError> {
        let adapter = self.adapter().await?;
        let peripheral = adapter
            .peripherals()
            .await
            .map_err(|e| BleError::operation("list devices", e))?
            .into_iter()
            .find(|p| p.address().into_inner() == address)
            .ok_or_else(|| BleError::NotFound(format_address(&address)))?;
        peripheral
            .connect()
            .await
            .map_err(|e| BleError::operation("connect", e))?;
        Ok(BtleplugLink { peripheral })
    }
}

/// One btleplug connection.
pub struct BtleplugLink {
    peripheral: Peripheral,
}

impl BtleplugLink {
    fn characteristic(&self, uuid: u16) -> Result<Characteristic, BleError> {
        let full = uuid_from_u16(uuid);
        self.peripheral
            .characteristics()
            .into_iter()
            .find(|c| c.uuid == full)
            .ok_or_else(|| BleError::operation(format!("find {uuid:04X}"), "not discovered"))
    }
}

impl Link for BtleplugLink {
    async fn discover(&self) -> Result<Vec<GattCharacteristic>, BleError> {
        self.peripheral
            .discover_services()
            .await
            .map_err(|e| BleError::operation("discover", e))?;
        Ok(self
            .peripheral
            .characteristics()
            .iter()
            .filter_map(|c| {
                Some(GattCharacteristic {
                    service: short(&c.service_uuid)?,
                    uuid: short(&c.uuid)?,
                    properties: Properties {
                        read: c.properties.contains(CharPropFlags::READ),
                        write: c.properties.contains(CharPropFlags::WRITE),
                        notify: c.properties.contains(CharPropFlags::NOTIFY),
                        indicate: c.properties.contains(CharPropFlags::INDICATE),
                    },
                })
            })
            .collect())
    }

    async fn notifications(&self) -> Result<mpsc::Receiver<Notification>, BleError> {
        let mut stream = self
            .peripheral
            .notifications()
            .await
            .map_err(|e| BleError::operation("notifications", e))?;
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        tokio::spawn(async move {
            while let Some(n) = stream.next().await {
                let Some(characteristic) = short(&n.uuid) else {
                    continue;
                };
                let n = Notification {
                    characteristic,
                    value: n.value,
                };
                if tx.send(n).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn subscribe(&self, characteristic: u16) -> Result<(), BleError> {
        let c = self.characteristic(characteristic)?;
        self.peripheral
            .subscribe(&c)
            .await
            .map_err(|e| BleError::operation(format!("subscribe {characteristic:04X}"), e))
    }

    async fn read(&self, characteristic: u16) -> Result<Vec<u8>, BleError> {
        let c = self.characteristic(characteristic)?;
        self.peripheral
            .read(&c)
            .await
            .map_err(|e| BleError::operation(format!("read {characteristic:04X}"), e))
    }

    async fn write(&self, characteristic: u16, value: Vec<u8>) -> Result<(), BleError> {
        let c = self.characteristic(characteristic)?;
        self.peripheral
            .write(&c, &value, WriteType::WithResponse)
            .await
            .map_err(|e| BleError::operation(format!("write {characteristic:04X}"), e))
    }

    async fn disconnect(&self) -> Result<(), BleError> {
        self.peripheral
            .disconnect()
            .await
            .map_err(|e| BleError::operation("disconnect", e))
    }
}
