//! In-kernel providers driven through the guest agent (configfs and sysfs writes): gpio-sim
//! chips and at24 clients on an adapter. Their "unplug" is what the kernel offers: `live=0`
//! for gpio-sim, `delete_device` for an I2C client.

use crate::run::agent_link::{Agent, AgentError};

/// A live gpio-sim chip with one bank.
pub struct GpioSim {
    /// `/sys/kernel/config/gpio-sim/<name>`.
    pub configfs: String,
    /// `/dev/gpiochipN`.
    pub dev: String,
    /// The platform device (`gpio-sim.N`), for the `sim_gpioK/pull` attributes.
    pub platform: String,
}

impl GpioSim {
    /// Creates and enables a chip with `lines` lines; `names` names the first lines.
    pub async fn create(agent: &Agent, name: &str, lines: u32, names: &[&str]) -> Result<GpioSim, AgentError> {
        let configfs = format!("/sys/kernel/config/gpio-sim/{name}");
        agent.mkdir(&configfs).await?;
        agent.mkdir(&format!("{configfs}/bank0")).await?;
        agent.write_file(&format!("{configfs}/bank0/num_lines"), lines.to_string().as_bytes()).await?;
        for (i, line) in names.iter().enumerate() {
            agent.mkdir(&format!("{configfs}/bank0/line{i}")).await?;
            agent.write_file(&format!("{configfs}/bank0/line{i}/name"), line.as_bytes()).await?;
        }
        agent.write_file(&format!("{configfs}/live"), b"1").await?;
        let chip = agent.read_file(&format!("{configfs}/bank0/chip_name")).await?;
        let platform = agent.read_file(&format!("{configfs}/dev_name")).await?;
        Ok(GpioSim {
            dev: format!("/dev/{}", String::from_utf8_lossy(&chip).trim()),
            platform: String::from_utf8_lossy(&platform).trim().to_string(),
            configfs,
        })
    }

    /// Drives `line` from the simulated outside: `pull-up` or `pull-down` (an edge for an
    /// input line).
    pub async fn pull(&self, agent: &Agent, line: u32, how: &str) -> Result<(), AgentError> {
        let chip = self.dev.trim_start_matches("/dev/");
        let path = format!("/sys/devices/platform/{}/{chip}/sim_gpio{line}/pull", self.platform);
        agent.write_file(&path, how.as_bytes()).await
    }

    /// The unplug: `live=0` removes the chip while consumers may still hold its lines.
    pub async fn unplug(&self, agent: &Agent) -> Result<(), AgentError> {
        agent.write_file(&format!("{}/live", self.configfs), b"0").await
    }

    /// Removes the (dead) chip's configfs groups.
    pub async fn remove(self, agent: &Agent) -> Result<(), AgentError> {
        let bank = format!("{}/bank0", self.configfs);
        // Line groups first; configfs refuses to remove a non-empty group.
        agent.exec(&["sh", "-c", &format!("rmdir {bank}/line* 2>/dev/null; true")], agent.pace().scale(TIMEOUT)).await?;
        agent.rmdir(&bank).await?;
        agent.rmdir(&self.configfs).await
    }
}

/// Deadline of one provider command in the guest (reference machines; scaled by the agent's
/// pace, see `crate::run::pace`).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Instantiates an at24 EEPROM (`part`, e.g. `24c02`) at `addr` on adapter `bus`; returns
/// its nvmem device name (`<bus>-00<addr>0`).
pub async fn at24_new(agent: &Agent, bus: u32, part: &str, addr: u16) -> Result<String, AgentError> {
    let path = format!("/sys/bus/i2c/devices/i2c-{bus}/new_device");
    agent.write_file(&path, format!("{part} {addr:#04x}").as_bytes()).await?;
    Ok(format!("{bus}-{addr:04x}0"))
}

/// Removes the client at `addr` on adapter `bus` (the at24's unplug).
pub async fn at24_delete(agent: &Agent, bus: u32, addr: u16) -> Result<(), AgentError> {
    let path = format!("/sys/bus/i2c/devices/i2c-{bus}/delete_device");
    agent.write_file(&path, format!("{addr:#04x}").as_bytes()).await
}

/// Loads i2c-stub with a chip at `addr`; returns the adapter number it registered.
pub async fn i2c_stub(agent: &Agent, addr: u16) -> Result<u32, AgentError> {
    agent.exec_ok(&["modprobe", "i2c-stub", &format!("chip_addr={addr:#04x}")], agent.pace().scale(TIMEOUT)).await?;
    let out = agent.exec_ok(&["sh", "-c", "grep -l 'SMBus stub' /sys/bus/i2c/devices/i2c-*/name"], agent.pace().scale(TIMEOUT)).await?;
    let text = out.stdout_text();
    text.trim()
        .trim_end_matches("/name")
        .rsplit("/i2c-")
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| AgentError::Protocol(format!("no i2c-stub adapter in sysfs: {text:?}")))
}

/// A gpio-virtuser device: an in-kernel GPIO consumer whose lines (connection `con_id`,
/// entries 0..n) are looked up by line name, or by chip label and offset.
pub struct GpioVirtuser {
    /// `/sys/kernel/config/gpio-virtuser/<name>`.
    pub configfs: String,
    con_id: String,
    entries: usize,
}

/// Where a gpio-virtuser entry finds its line.
pub enum LineLookup<'a> {
    /// A line name (`offset -1`), e.g. one set on a gpio-sim line.
    Name(&'a str),
    /// A chip label and an offset on it.
    Chip(&'a str, u32),
}

impl GpioVirtuser {
    /// Creates the device and requests its lines (`live=1`).
    pub async fn create(
        agent: &Agent,
        name: &str,
        con_id: &str,
        lines: &[LineLookup<'_>],
    ) -> Result<GpioVirtuser, AgentError> {
        let configfs = format!("/sys/kernel/config/gpio-virtuser/{name}");
        agent.mkdir(&configfs).await?;
        agent.mkdir(&format!("{configfs}/{con_id}")).await?;
        for (i, line) in lines.iter().enumerate() {
            let entry = format!("{configfs}/{con_id}/{i}");
            agent.mkdir(&entry).await?;
            let (key, offset) = match line {
                LineLookup::Name(n) => (*n, -1i64),
                LineLookup::Chip(label, off) => (*label, i64::from(*off)),
            };
            agent.write_file(&format!("{entry}/key"), key.as_bytes()).await?;
            agent.write_file(&format!("{entry}/offset"), offset.to_string().as_bytes()).await?;
        }
        agent.write_file(&format!("{configfs}/live"), b"1").await?;
        Ok(GpioVirtuser { configfs, con_id: con_id.to_string(), entries: lines.len() })
    }

    /// The debugfs attribute `attr` (`value`, `interrupts`, ...) of entry `index`.
    async fn debugfs(&self, agent: &Agent, index: usize, attr: &str) -> Result<String, AgentError> {
        let dev = agent.read_file(&format!("{}/dev_name", self.configfs)).await?;
        let dev = String::from_utf8_lossy(&dev).trim().to_string();
        Ok(format!("/sys/kernel/debug/gpio-virtuser/{dev}/gpiod:{}:{index}/{attr}", self.con_id))
    }

    /// Writes `data` to entry `index`'s debugfs attribute (`value` toggles, `interrupts`
    /// requests the line's IRQ with `1`).
    pub async fn set(&self, agent: &Agent, index: usize, attr: &str, data: &str) -> Result<(), AgentError> {
        let path = self.debugfs(agent, index, attr).await?;
        agent.write_file(&path, data.as_bytes()).await
    }

    /// Reads entry `index`'s debugfs attribute with `cat` (these files refuse `pread`):
    /// `Ok(value)`, or `Err(cat's complaint)` naming the kernel's error.
    pub async fn get(&self, agent: &Agent, index: usize, attr: &str) -> Result<Result<String, String>, AgentError> {
        let path = self.debugfs(agent, index, attr).await?;
        let out = agent.exec(&["cat", &path], agent.pace().scale(TIMEOUT)).await?;
        Ok(if out.success() {
            Ok(out.stdout_text().trim().to_string())
        } else {
            Err(out.stderr_text().trim().to_string())
        })
    }

    /// Tears the consumer down (`live=0`) and removes its configfs groups.
    pub async fn remove(self, agent: &Agent) -> Result<(), AgentError> {
        agent.write_file(&format!("{}/live", self.configfs), b"0").await?;
        for i in 0..self.entries {
            agent.rmdir(&format!("{}/{}/{i}", self.configfs, self.con_id)).await?;
        }
        agent.rmdir(&format!("{}/{}", self.configfs, self.con_id)).await?;
        agent.rmdir(&self.configfs).await
    }
}
