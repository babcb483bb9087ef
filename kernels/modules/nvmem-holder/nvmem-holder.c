// SPDX-License-Identifier: GPL-2.0
/*
 * nvmem-holder: an in-kernel nvmem consumer that keeps a struct nvmem_device across its
 * provider's removal, for unplug-torture (scenario S1, kernel-notes §8).
 *
 * debugfs /sys/kernel/debug/nvmem-holder/:
 *   get   write a device name: nvmem_device_find(name, device_match_name) and hold it
 *   read  read: nvmem_device_read(dev, 0, 16, buf), printed as hex, or the negative errno
 *   put   write anything: nvmem_device_put() the held device
 *
 * Nothing here checks whether the provider is still there: that is the point. After the
 * provider (at24) is unbound, a read goes into the provider's freed state on kernels whose
 * nvmem core does not track provider removal.
 */
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nvmem-consumer.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define HOLDER_READ_LEN 16

static struct dentry *holder_dir;
static DEFINE_MUTEX(holder_lock);
static struct nvmem_device *held;

static ssize_t get_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	char name[64];
	struct nvmem_device *nvmem;
	size_t n = min(len, sizeof(name) - 1);

	if (copy_from_user(name, ubuf, n))
		return -EFAULT;
	name[n] = '\0';
	strim(name);

	nvmem = nvmem_device_find(name, device_match_name);
	if (IS_ERR(nvmem))
		return PTR_ERR(nvmem);

	mutex_lock(&holder_lock);
	if (held)
		nvmem_device_put(held);
	held = nvmem;
	mutex_unlock(&holder_lock);
	return len;
}

static ssize_t read_read(struct file *file, char __user *ubuf, size_t len, loff_t *ppos)
{
	u8 buf[HOLDER_READ_LEN];
	char out[3 * HOLDER_READ_LEN + 16];
	int ret, n = 0, i;

	mutex_lock(&holder_lock);
	ret = held ? nvmem_device_read(held, 0, HOLDER_READ_LEN, buf) : -ENODEV;
	mutex_unlock(&holder_lock);

	if (ret < 0) {
		n = scnprintf(out, sizeof(out), "%d\n", ret);
	} else {
		for (i = 0; i < ret && i < HOLDER_READ_LEN; i++)
			n += scnprintf(out + n, sizeof(out) - n, "%02x", buf[i]);
		n += scnprintf(out + n, sizeof(out) - n, "\n");
	}
	return simple_read_from_buffer(ubuf, len, ppos, out, n);
}

static ssize_t put_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	mutex_lock(&holder_lock);
	if (held)
		nvmem_device_put(held);
	held = NULL;
	mutex_unlock(&holder_lock);
	return len;
}

static const struct file_operations get_fops = {
	.owner = THIS_MODULE,
	.write = get_write,
};

static const struct file_operations read_fops = {
	.owner = THIS_MODULE,
	.read = read_read,
};

static const struct file_operations put_fops = {
	.owner = THIS_MODULE,
	.write = put_write,
};

static int __init nvmem_holder_init(void)
{
	holder_dir = debugfs_create_dir("nvmem-holder", NULL);
	debugfs_create_file("get", 0200, holder_dir, NULL, &get_fops);
	debugfs_create_file("read", 0400, holder_dir, NULL, &read_fops);
	debugfs_create_file("put", 0200, holder_dir, NULL, &put_fops);
	return 0;
}

static void __exit nvmem_holder_exit(void)
{
	debugfs_remove_recursive(holder_dir);
	if (held)
		nvmem_device_put(held);
}

module_init(nvmem_holder_init);
module_exit(nvmem_holder_exit);
MODULE_DESCRIPTION("unplug-torture: an nvmem consumer holding a device across its removal");
MODULE_LICENSE("GPL");
